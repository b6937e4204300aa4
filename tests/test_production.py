"""Production refuses to start half-configured; `keepflow config check` says what it sees, secrets masked."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keepflow.production import problems, providers_line
from keepflow.runtime.registry import load_catalog
from keepflow.settings import Settings
from tests.engine import ROOT, SHOP_SEQUENCES, SHOP_TEMPLATES
from tests.helpers import LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES, write_project
from tests.test_dev_links import NOTE, SEQUENCES

OURS = ("KEEPFLOW_", "TEMPORAL_", "SENDGRID_", "TWILIO_", "SHOPIFY_", "LINE_", "DATABASE_URL")
SENDGRID_KEY = "SG.a-sendgrid-key-nobody-may-see"
TWILIO_TOKEN = "a-twilio-token-nobody-may-see"
LINE_TOKEN = "a-line-channel-token-nobody-may-see"
LINE_SECRET = "a-line-channel-secret-nobody-may-see"
UNSUBSCRIBE = "an-unsubscribe-secret-nobody-may-see"
PAYLOAD_KEYS = "k1:" + base64.b64encode(b"\x01" * 32).decode()
WEBHOOK = "whsec_" + base64.b64encode(b"\x02" * 32).decode()

READY = {
    "SENDGRID_API_KEY": SENDGRID_KEY, "TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
    "TWILIO_FROM_NUMBER": "+15005550006", "KEEPFLOW_PUBLIC_URL": "https://mail.shop.example",
    "KEEPFLOW_UNSUBSCRIBE_SECRET": UNSUBSCRIBE, "KEEPFLOW_EMAIL_FROM": "Lumen <hello@lumen-camera.co>",
    "KEEPFLOW_PAYLOAD_KEYS": PAYLOAD_KEYS, "KEEPFLOW_WEBHOOK_SECRET": WEBHOOK,
    "LINE_CHANNEL_ACCESS_TOKEN": LINE_TOKEN, "LINE_CHANNEL_SECRET": LINE_SECRET,
}


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **{k: v for k, v in env.items()})  # type: ignore[call-arg]


def test_a_fully_configured_process_has_no_problems(tmp_path):
    ready = settings(tmp_path, **READY)
    assert problems(ready, "worker") == [] and problems(ready, "serve") == []
    assert providers_line(ready) == "email via SendGrid, SMS via Twilio, LINE via LINE's Messaging API"


def test_every_half_configured_default_is_one_line_naming_what_to_set(tmp_path):
    bare = settings(tmp_path)
    found = problems(bare, "serve")
    for variable in ("SENDGRID_API_KEY", "TWILIO_AUTH_TOKEN", "KEEPFLOW_PUBLIC_URL", "KEEPFLOW_UNSUBSCRIBE_SECRET",
                     "KEEPFLOW_EMAIL_FROM", "KEEPFLOW_PAYLOAD_KEYS", "KEEPFLOW_WEBHOOK_SECRET"):
        assert sum(variable in line for line in found) == 1, (variable, found)
    assert all("\n" not in line for line in found)
    # The worker verifies no webhooks: it does not need their secret.
    assert not any("KEEPFLOW_WEBHOOK_SECRET" in line for line in problems(bare, "worker"))


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("KEEPFLOW_PUBLIC_URL", "http://mail.shop.example", "https://"),
    ("KEEPFLOW_PUBLIC_URL", None, "KEEPFLOW_PUBLIC_URL is not set"),
    ("KEEPFLOW_EMAIL_FROM", None, "example address"),
    ("KEEPFLOW_EMAIL_FROM", "Shop <news@shop.example>", "example address"),
    ("KEEPFLOW_UNSUBSCRIBE_SECRET", " , ", "KEEPFLOW_UNSUBSCRIBE_SECRET"),
    ("KEEPFLOW_PAYLOAD_KEYS", None, "KEEPFLOW_PAYLOAD_KEYS"),
    ("SENDGRID_API_KEY", None, "no email provider"),
    ("TWILIO_AUTH_TOKEN", None, "no SMS provider"),
])
def test_each_check_alone(tmp_path, variable, value, words):
    env = {k: v for k, v in READY.items() if k != variable}
    if value is not None:
        env[variable] = value
    [line] = problems(settings(tmp_path, **env), "worker")
    assert words in line


def test_a_shop_that_sends_no_texts_needs_no_sms_provider(tmp_path):
    email_only = load_catalog(write_project(tmp_path, SEQUENCES, {"email/note.en.html": NOTE}))
    env = {k: v for k, v in READY.items() if not k.startswith("TWILIO")}
    assert problems(settings(tmp_path, **env), "worker", email_only) == []
    [line] = problems(settings(tmp_path, **env), "worker")  # sequences unknown: both channels
    assert "no SMS provider" in line
    shop = load_catalog(SHOP_SEQUENCES, SHOP_TEMPLATES)  # it texts
    assert problems(settings(tmp_path, **env), "worker", shop) == [line]


LINE_SEQUENCES = SEQUENCES.replace("send: email", "send: line").replace("template: note", "template: tip")


@pytest.mark.parametrize(("missing", "words"), [
    ("LINE_CHANNEL_ACCESS_TOKEN", "no LINE provider"),
    ("LINE_CHANNEL_SECRET", "LINE_CHANNEL_SECRET is not set"),
])
def test_a_shop_that_sends_on_line_needs_its_token_and_secret(tmp_path, missing, words):
    line_only = load_catalog(write_project(tmp_path, LINE_SEQUENCES, {"line/tip.en.txt": "{{ brand.name }}: a tip"}))
    line = {"LINE_CHANNEL_ACCESS_TOKEN": "a-line-token", "LINE_CHANNEL_SECRET": "a-line-secret"}
    no_line = {k: v for k, v in READY.items() if not k.startswith("LINE_")}
    env = {**no_line, **{k: v for k, v in line.items() if k != missing}}
    for process in ("worker", "serve"):
        [found] = problems(settings(tmp_path, **env), process, line_only)  # type: ignore[arg-type]
        assert words in found and missing in found
    assert problems(settings(tmp_path, **no_line, **line), "serve", line_only) == []
    # A shop whose sequences do not send on LINE is asked for neither.
    assert problems(settings(tmp_path, **no_line), "serve") == []


def test_the_outbox_when_meant(tmp_path):
    env = {k: v for k, v in READY.items() if not k.startswith(("SENDGRID", "TWILIO"))}
    assert problems(settings(tmp_path, **env, KEEPFLOW_ALLOW_OUTBOX="true"), "worker") == []


def run(tmp_path: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(OURS)}
    clean.update({"KEEPFLOW_SEQUENCES": str(SHOP_SEQUENCES), "KEEPFLOW_TEMPLATES": str(SHOP_TEMPLATES),
                  "KEEPFLOW_DATA_DIR": str(tmp_path / "var"),
                  # Nothing listens here: a process that got past its checks would hang or fail differently.
                  "TEMPORAL_ADDRESS": "127.0.0.1:1", **env})
    return subprocess.run(command, cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60)


KEEPFLOW = (sys.executable, "-m", "keepflow.cli")


@pytest.mark.parametrize("command", [(*KEEPFLOW, "worker"), (sys.executable, str(ROOT / "worker.py")),
                                     (*KEEPFLOW, "serve")], ids=["keepflow worker", "python worker.py", "keepflow serve"])
def test_production_processes_refuse_to_start_half_configured(tmp_path, command):
    result = run(tmp_path, *command, TWILIO_AUTH_TOKEN=TWILIO_TOKEN, TWILIO_ACCOUNT_SID="AC" + "1" * 32,
                 TWILIO_FROM_NUMBER="+15005550006", KEEPFLOW_PUBLIC_URL="http://127.0.0.1:8000")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("keepflow ") and "refusing to start" in line for line in lines), result.stderr
    for words in ("no email provider", "https://", "KEEPFLOW_UNSUBSCRIBE_SECRET", "KEEPFLOW_PAYLOAD_KEYS"):
        assert sum(words in line for line in lines) == 1, (words, lines)
    assert TWILIO_TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var" / "keepflow.db").exists()  # refused before touching anything


def test_config_check_masks_secrets_and_lists_the_problems(tmp_path):
    result = run(tmp_path, *KEEPFLOW, "config", "check", **{**READY, "KEEPFLOW_PUBLIC_URL": "http://x.example"})
    assert result.returncode == 1
    out = result.stdout + result.stderr
    for secret in (SENDGRID_KEY, TWILIO_TOKEN, UNSUBSCRIBE, PAYLOAD_KEYS, WEBHOOK, LINE_TOKEN, LINE_SECRET):
        assert secret not in out
    assert "SENDGRID_API_KEY" in out and "(set, hidden)" in out
    assert "KEEPFLOW_PUBLIC_URL" in out and "http://x.example" in out
    assert "https://" in result.stdout and "refuse" in result.stdout
    ready = run(tmp_path, *KEEPFLOW, "config", "check", **READY)
    assert ready.returncode == 0 and "email via SendGrid, SMS via Twilio, LINE via LINE's Messaging API" in ready.stdout


def test_settings_never_print_a_secret(tmp_path):
    ready = settings(tmp_path, **READY)
    for shown in (repr(ready), str(ready), ready.model_dump_json()):
        for secret in (SENDGRID_KEY, TWILIO_TOKEN, UNSUBSCRIBE, PAYLOAD_KEYS, WEBHOOK, LINE_TOKEN, LINE_SECRET):
            assert secret not in shown


def test_every_setting_is_in_env_example_and_the_operations_guide():
    example = (ROOT / ".env.example").read_text()
    guide = (ROOT / "docs" / "operations.md").read_text()
    variables = [str(field.validation_alias) for field in Settings.model_fields.values()]
    assert len(variables) == len(Settings.model_fields) and all(v.isupper() for v in variables)
    missing = [v for v in variables if not re.search(rf"^#? ?{v}=", example, re.MULTILINE)]
    assert missing == [], f".env.example lacks {missing}"
    undocumented = [v for v in variables if f"`{v}`" not in guide]
    assert undocumented == [], f"docs/operations.md lacks {undocumented}"


def test_env_example_as_is_changes_nothing(tmp_path):
    # Copied to .env unedited, it must not quietly configure anything: every line is a comment.
    lines = [line for line in (ROOT / ".env.example").read_text().splitlines() if line.strip()]
    assert all(line.startswith("#") for line in lines)


def test_a_texts_fallback_needs_the_sms_provider_too(tmp_path):
    line_then_sms = load_catalog(write_project(tmp_path, LINE_TIP_OR_SMS, LINE_TIP_TEMPLATES))
    env = {k: v for k, v in READY.items() if not k.startswith("TWILIO")}
    found = problems(settings(tmp_path, **env), "worker", line_then_sms)
    assert any("no SMS provider" in line for line in found), found
