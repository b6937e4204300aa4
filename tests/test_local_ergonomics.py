"""Running Keepflow on one machine: `make run` on other ports, the CLI finding the running
`keepflow dev` by itself, one-line errors for everyday mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keepflow.cli import app
from keepflow.http.signing import verify
from keepflow.runtime import routing
from keepflow.runtime.events import EventIn
from keepflow.settings import get_settings
from keepflow.store import Database, upgrade
from keepflow.tools.dev_state import STATE_FILE, write_state

ROOT = Path(__file__).resolve().parent.parent


def make_dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", "run", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_make_run_passes_the_ports_it_is_given_to_keepflow_dev() -> None:
    command = make_dry_run("HTTP_PORT=9100", "TEMPORAL_PORT=7300", "ADMIN_PORT=9101", "UI_PORT=0")
    dev = next(line for line in command.splitlines() if "keepflow dev" in line)
    assert "--http-port 9100" in dev and "--temporal-port 7300" in dev
    assert "--admin-port 9101" in dev and "--ui-port 0" in dev


def test_make_run_without_ports_keeps_the_defaults_of_keepflow_dev() -> None:
    dev = next(line for line in make_dry_run().splitlines() if "keepflow dev" in line)
    assert "--" not in dev


# --- the CLI finds the running `keepflow dev` through the state file it keeps in the data dir ---

EVENT = {"id": "evt-state-1", "type": "customer.created", "occurred_at": "2026-01-02T03:04:05+00:00",
         "customer": {"id": "c1", "email": "nok@example.com", "consents": {"email": True}}}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A shell with nothing exported: the CLI's settings are its defaults (data dir var/ here)."""
    for name in list(os.environ):
        if name.startswith(("KEEPFLOW_HTTP", "KEEPFLOW_DATA_DIR", "KEEPFLOW_WEBHOOK", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def listener() -> Iterator[tuple[int, list[tuple[bytes, dict]]]]:
    """An /events endpoint that records what reaches it and answers 202."""
    received: list[tuple[bytes, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], received
    server.shutdown()
    server.server_close()


def dev_elsewhere(here: Path, http_port: int, pid: int | None = None, **overrides) -> Path:
    """What `keepflow dev --http-port N` leaves in var/: its secret file in a folder of its own."""
    secret = here / "elsewhere" / "webhook-secret"
    secret.parent.mkdir()
    secret.write_text("whsec_c2VjcmV0LW9mLXRoZS1ydW5uaW5nLXN0YWNr\n")
    fields = {"http_host": "127.0.0.1", "http_port": http_port, "admin_port": 8001,
              "temporal_address": "127.0.0.1:7233", "data_dir": str(here / "var"),
              "database_url": f"sqlite:///{here / 'elsewhere' / 'keepflow.db'}",
              "webhook_secret_file": str(secret)} | overrides
    return write_state(here / "var", pid=pid or os.getpid(), **fields)


def test_the_state_file_is_private_and_holds_no_secret(here: Path) -> None:
    path = dev_elsewhere(here, 9999)
    assert path == here / "var" / STATE_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert "whsec_" not in path.read_text()


def test_send_event_posts_to_the_running_dev_stack_signed_with_its_secret(here: Path, listener) -> None:
    port, received = listener
    dev_elsewhere(here, port)
    (here / "event.json").write_text(json.dumps(EVENT))
    result = CliRunner().invoke(app, ["send-event", "event.json"])
    assert result.exit_code == 0, result.output
    body, headers = received[0]
    assert verify(body, headers, ["whsec_c2VjcmV0LW9mLXRoZS1ydW5uaW5nLXN0YWNr"])


def test_an_exported_port_wins_over_the_state_file(here: Path, listener, monkeypatch) -> None:
    port, received = listener
    dev_elsewhere(here, 9)  # nothing listens on the discard port
    monkeypatch.setenv("KEEPFLOW_HTTP_PORT", str(port))
    get_settings.cache_clear()
    (here / "event.json").write_text(json.dumps(EVENT))
    result = CliRunner().invoke(app, ["send-event", "event.json"])
    assert result.exit_code == 0, result.output
    assert len(received) == 1


def test_events_and_report_read_the_database_of_the_running_dev_stack(here: Path) -> None:
    dev_elsewhere(here, 9999)
    url = f"sqlite:///{here / 'elsewhere' / 'keepflow.db'}"
    upgrade(url)
    db = Database(url)
    routing.store(db, EventIn.model_validate(EVENT))
    db.dispose()
    listed = CliRunner().invoke(app, ["events"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "evt-state-1" in listed.output
    report = CliRunner().invoke(app, ["report", "--format", "json"])
    assert report.exit_code == 0, report.output
    assert not (here / "var" / "keepflow.db").exists()  # no empty store made beside it


def test_with_no_dev_stack_send_event_says_so_in_one_line(here: Path) -> None:
    (here / "event.json").write_text(json.dumps(EVENT))
    result = CliRunner().invoke(app, ["send-event", "event.json"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "make run" in lines[0]


def test_a_dev_stack_that_has_stopped_is_named_as_stopped(here: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    dev_elsewhere(here, 9999, pid=dead.pid)
    (here / "event.json").write_text(json.dumps(EVENT))
    result = CliRunner().invoke(app, ["send-event", "event.json"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "stopped" in lines[0] and "make run" in lines[0]


def test_with_no_dev_stack_and_no_database_events_and_report_say_so(here: Path) -> None:
    for command in (["events"], ["report"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "make run" in lines[0] and "DATABASE_URL" in lines[0], result.output
        assert not (here / "var" / "keepflow.db").exists()


# --- everyday mistakes end in one line naming the thing and the fix, not a traceback ---

@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something else listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def first_line_without_traceback(output: str) -> str:
    assert "Traceback" not in output, output
    return output.strip().splitlines()[0]


def test_keepflow_dev_on_a_port_in_use_names_it_and_how_to_choose_another(here: Path, held_port: int) -> None:
    from keepflow.tools.temporal_dev_server import free_port

    result = CliRunner().invoke(app, ["dev", "--http-port", str(held_port), "--temporal-port", str(free_port()),
                                      "--ui-port", "0", "--admin-port", str(free_port())])
    assert result.exit_code == 1
    line = first_line_without_traceback(result.output)
    assert f"127.0.0.1:{held_port}" in line and "in use" in line and "--http-port" in line and "HTTP_PORT=" in line
    assert not (here / "var" / "temporal.db").exists()  # refused before Temporal's server started


def test_keepflow_dashboard_on_a_port_in_use_names_it(here: Path, held_port: int) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--port", str(held_port)],
                                env={"KEEPFLOW_SESSION_SECRET": "s" * 40})
    assert result.exit_code == 1
    line = first_line_without_traceback(result.output)
    assert f"127.0.0.1:{held_port}" in line and "in use" in line and "--port" in line


async def test_serve_http_refuses_a_port_in_use_before_uvicorn_starts(held_port: int) -> None:
    import asyncio

    from fastapi import FastAPI

    from keepflow.http.serving import PortInUse, serve_http

    with pytest.raises(PortInUse) as refused:
        await serve_http(FastAPI(), "127.0.0.1", held_port, asyncio.Event(), option="--port")
    assert f"127.0.0.1:{held_port}" in str(refused.value) and "--port" in str(refused.value)


@pytest.fixture
def broken_activity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """activities/broken.py with a syntax error on line 3, beside the package's own modules."""
    import activities

    folder = tmp_path / "more_activities"
    folder.mkdir()
    broken = folder / "broken.py"
    broken.write_text("from keepflow.runtime.registry import activity\n\ndef oops(:\n    pass\n")
    monkeypatch.setattr(activities, "__path__", [*activities.__path__, str(folder)])
    return broken


@pytest.mark.parametrize("command", [["validate"], ["dev", "--ui-port", "0"], ["demo"], ["graph", "winback"]])
def test_a_syntax_error_in_an_activity_module_is_one_line_at_its_place(broken_activity: Path, command) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    line = first_line_without_traceback(result.output)
    assert line.startswith(f"{broken_activity}:3:") and "syntax error" in line and "activities/" in line


def test_a_missing_sequences_file_is_one_line_naming_it(here: Path) -> None:
    customer = ROOT / "examples" / "customer.json"
    for command in (["validate", "nosuch.yaml"], ["graph", "winback", "--sequences", "nosuch.yaml"],
                    ["simulate", "winback", "--customer", str(customer), "--sequences", "nosuch.yaml"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        line = first_line_without_traceback(result.output)
        assert "nosuch.yaml" in line and "not found" in line


def test_send_event_with_a_missing_event_file_names_it(here: Path) -> None:
    result = CliRunner().invoke(app, ["send-event", "nosuch.json"])
    assert result.exit_code != 0
    line = first_line_without_traceback(result.output)
    assert "nosuch.json" in line


# --- `make test` with only Python and make: the browser test skips, saying why ---

def test_without_chromium_the_browser_test_skips_with_its_reason(tmp_path: Path, monkeypatch) -> None:
    from tests.browser import chromium

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KEEPFLOW_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium is not installed"):
        chromium()


def test_ci_requires_chromium_so_the_browser_test_cannot_vanish_there(tmp_path: Path, monkeypatch) -> None:
    from tests.browser import chromium

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("KEEPFLOW_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="Chromium is not installed"):
        chromium()
    assert "KEEPFLOW_REQUIRE_BROWSER=1" in (ROOT / ".ci" / "run").read_text()


def test_make_test_prints_the_reason_of_each_skip() -> None:
    done = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True)
    pytest_line = next(line for line in done.stdout.splitlines() if "bin/pytest" in line)
    assert "-rs" in pytest_line.split()


def test_an_address_this_machine_does_not_have_is_one_line_too(here: Path) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--host", "203.0.113.1", "--port", "8001"],
                                env={"KEEPFLOW_SESSION_SECRET": "s" * 40})
    assert result.exit_code == 1
    line = first_line_without_traceback(result.output)
    assert "203.0.113.1:8001" in line and "--host" in line


async def test_a_port_taken_after_the_check_is_still_an_error_the_cli_can_word(held_port: int, monkeypatch) -> None:
    import asyncio

    from fastapi import FastAPI

    from keepflow.http import serving

    monkeypatch.setattr(serving, "refuse_ports_in_use", lambda listeners: None)  # as if taken after it
    with pytest.raises(serving.CannotListen, match=f"127.0.0.1:{held_port}"):
        await serving.serve_http(FastAPI(), "127.0.0.1", held_port, asyncio.Event())


def test_run_words_a_listener_that_failed_inside_the_dev_stack_task_group(capsys) -> None:
    import typer

    from keepflow.cli import _run
    from keepflow.http.serving import CannotListen

    async def stack() -> None:
        async def fails() -> None:
            raise CannotListen("127.0.0.1", 8000, "already in use", "choose another port with --http-port")

        import asyncio
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(fails())

    with pytest.raises(typer.Exit) as ended:
        _run(stack())
    assert ended.value.exit_code == 1
    assert capsys.readouterr().err == ("refusing to start: cannot listen on 127.0.0.1:8000: already in use: "
                                       "choose another port with --http-port\n")


def test_a_dev_stack_on_a_database_from_its_environment_asks_for_the_same_here(here: Path) -> None:
    dev_elsewhere(here, 9999, database_url=None, database_url_from="DATABASE_URL")
    result = CliRunner().invoke(app, ["events"])
    assert result.exit_code == 1
    line = first_line_without_traceback(result.output)
    assert "DATABASE_URL" in line and "no keepflow dev" not in line
