"""Where a running `keepflow dev` listens, kept in `<data_dir>/dev-state.json` while it runs, so
`keepflow send-event`, `events` and `report` find it on any port with nothing exported.

The file names the webhook secret's file, never the secret: it is there to be read by the other
commands of the same user, and a secret copied into it would outlive a rotation."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from keepflow.settings import Settings, dev_secret, private_dir

STATE_FILE = "dev-state.json"


def write_state(directory: Path, /, pid: int | None = None, **fields: Any) -> Path:
    path = private_dir(directory) / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    # 0600 from the first byte, then renamed into place, so a reader never sees half a file.
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        json.dump({"pid": pid or os.getpid(), **fields}, file, indent=2)
    temporary.replace(path)
    return path


def remove_state(data_dir: Path) -> Path | None:
    """Remove the file if this process wrote it (a second `keepflow dev` on the same data dir may own it)."""
    path = data_dir / STATE_FILE
    state = _read(path)
    if state is None or state.get("pid") != os.getpid():
        return None
    path.unlink(missing_ok=True)
    return path


def _read(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the number: not our dev stack
        return False
    return True


@dataclass(frozen=True)
class DevStack:
    """What the CLI knows of the local dev stack: the settings to use and, when it cannot reach
    it, one line saying why and what to do."""
    settings: Settings
    found: bool  # a state file was read (running or not)
    stopped: str | None = None  # the line to print when the stack it names is no longer running
    webhook_secret: str | None = None
    # Set when the stack checks signatures with a secret from its own environment, not a file.
    secret_from: str | None = None
    # Set when the stack's store came from its own environment (a URL that may carry a password).
    database_from: str | None = None

    def secret(self) -> str:
        return self.webhook_secret or (self.settings.webhook_secrets or [dev_secret(self.settings.data_dir)])[0]


def locate(settings: Settings) -> DevStack:
    """The settings for a command that talks to the local stack, with the running `keepflow dev`'s
    ports, database and secret file filled in for whatever the environment does not give."""
    path = settings.data_dir / STATE_FILE
    state = _read(path)
    if state is None:
        return DevStack(settings, found=False)
    given = settings.model_fields_set
    update: dict[str, Any] = {}
    for name in ("http_host", "http_port", "database_url", "temporal_address"):
        if name not in given and state.get(name):
            update[name] = state[name]
    secret = None
    secret_file = state.get("webhook_secret_file")
    if "webhook_secret" not in given and secret_file:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError:
            secret = None
    # The key the stack seals payloads with, when it invented one: commands that ask its runs
    # (`deploy`, `impact`) must open what they answer.
    keys_file = settings.data_dir / "payload-keys"
    if "payload_keys" not in given and not settings.payload_keys and keys_file.exists():
        update["payload_keys"] = SecretStr(keys_file.read_text().strip())
    stopped = None
    if not _alive(state.get("pid")):
        stopped = (f"the keepflow dev recorded in {path} (pid {state.get('pid')}) has stopped: "
                   "start it again with `make run` (or `keepflow dev`)")
    return DevStack(settings.model_copy(update=update), found=True, stopped=stopped, webhook_secret=secret,
                    secret_from=None if "webhook_secret" in given else state.get("webhook_secret_from"),
                    database_from=None if "database_url" in given else state.get("database_url_from"))


def no_database_line(stack: DevStack) -> str | None:
    """One line when a command would read a store nobody has made yet (it would only show empty
    tables), else None."""
    settings = stack.settings
    if settings.database_url or "database_url" in settings.model_fields_set:
        return None
    if stack.database_from:
        return (f"the running keepflow dev reads its store from {stack.database_from} in its environment: "
                f"set the same {stack.database_from} here")
    db_file = settings.data_dir / "keepflow.db"
    if db_file.exists():
        return None
    return (f"no keepflow dev found and no database at {db_file}: start one with `make run`, "
            "or set DATABASE_URL (or KEEPFLOW_DATA_DIR) to the store to read")
