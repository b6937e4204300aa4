"""`keepflow dev` end to end: the links its worker writes point at the port its app listens on,
and open there (the worker and the app agree on the unsubscribe key without being told one);
`keepflow send-event` finds it on that port with nothing exported, through its state file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from keepflow.tools.temporal_dev_server import free_port
from tests.helpers import write_project

SEQUENCES = """\
brand:
  name: Test Shop
  postal_address: 1 Test Road
sequences:
  - id: hello
    category: marketing
    trigger: customer.created
    steps:
      - send: email
        template: note
"""
NOTE = "{% block subject %}Hello{% endblock %}{{ brand.postal_address }} {{ unsubscribe_url }}"


def wait_for(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {seconds} s")


@pytest.mark.timeout(120)
def test_dev_links_use_the_http_port_and_open_there(tmp_path: Path) -> None:
    sequences = write_project(tmp_path, SEQUENCES, {"email/note.en.html": NOTE})
    data = tmp_path / "var"
    http_port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KEEPFLOW_", "TEMPORAL_", "SENDGRID_", "TWILIO_", "DATABASE_URL"))}
    env.update({"KEEPFLOW_SEQUENCES": str(sequences), "KEEPFLOW_DATA_DIR": str(data),
                "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    log = (tmp_path / "dev.log").open("w")
    dev = subprocess.Popen([sys.executable, "-m", "keepflow.cli", "dev", "--http-port", str(http_port),
                            "--temporal-port", str(free_port()), "--ui-port", "0"],
                           cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 90, "healthy app")
        event = tmp_path / "event.json"
        event.write_text(json.dumps({
            "id": "evt-dev-links", "type": "customer.created", "occurred_at": datetime.now(timezone.utc).isoformat(),
            "customer": {"id": "c1", "email": "nok@example.com", "consents": {"email": True}}}))
        state = data / "dev-state.json"
        assert state.stat().st_mode & 0o777 == 0o600
        assert json.loads(state.read_text())["http_port"] == http_port
        assert "whsec_" not in state.read_text()
        # Nothing exported but the sequences: send-event finds the port and the secret in the state file.
        bare = {k: v for k, v in env.items() if k != "KEEPFLOW_DATA_DIR"}
        sent = subprocess.run([sys.executable, "-m", "keepflow.cli", "send-event", str(event)],
                              cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def mail() -> dict | None:
            outbox = data / "outbox.jsonl"
            lines = outbox.read_text().splitlines() if outbox.exists() else []
            return next((json.loads(line) for line in lines if json.loads(line)["channel"] == "email"), None)

        email = wait_for(mail, 60, "email in the outbox")
        links = re.findall(r"https?://[^\s\"<>]+/unsubscribe/[A-Za-z0-9_.-]+", json.dumps(email))
        assert links and all(link.startswith(f"http://127.0.0.1:{http_port}/unsubscribe/") for link in links), links
        page = httpx.get(links[0])
        assert page.status_code == 200 and "nok@example.com" in page.text
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
            dev.wait()
        log.close()
    assert not (data / "dev-state.json").exists()
    assert "removed" in (tmp_path / "dev.log").read_text()
