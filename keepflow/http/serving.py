"""Serving an app with uvicorn under Keepflow's own stop signal, so the worker and HTTP stop as one."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import socket

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # Signals belong to stop_on_signals(), so the worker and HTTP stop as one.
        yield


class CannotListen(Exception):
    def __init__(self, host: str, port: int, reason: str, fix: str):
        super().__init__(f"cannot listen on {host}:{port}: {reason}: {fix}")


class PortInUse(CannotListen):
    def __init__(self, host: str, port: int, option: str):
        super().__init__(host, port, "already in use (another Keepflow, or another program)",
                         f"stop what listens there, or choose another port with {option}")


def refuse_ports_in_use(listeners: list[tuple[str, int, str]]) -> None:
    """Raise PortInUse for the first (host, port, option) something already listens on.

    Checked before anything starts, so a busy port ends in one line instead of uvicorn's exit
    deep inside a task group, and no half-started stack (a Temporal server) is left to stop."""
    for host, port, option in listeners:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # As uvicorn binds: a port left in TIME_WAIT by a stopped server is free to it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port, option) from None
                # A host this machine does not have (EADDRNOTAVAIL), a port below 1024 (EACCES).
                raise CannotListen(host, port, err.strerror or str(err),
                                   f"check the address (--host) or choose another port with {option}") from None


async def serve_http(app: FastAPI, host: str, port: int, stop: asyncio.Event, option: str = "--port") -> None:
    refuse_ports_in_use([(host, port, option)])
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False))

    async def stop_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_asked())
    try:
        await server.serve()
    except SystemExit:
        # uvicorn exits the process when it cannot bind (the port taken since the check above);
        # as an exception the other tasks still stop in order and the CLI words it in one line.
        if server.started:
            raise
        raise CannotListen(host, port, "the server could not start (see the log above)",
                           f"choose another port with {option}") from None
    finally:
        watcher.cancel()
    if not server.started:
        raise RuntimeError(f"the HTTP server did not start on {host}:{port} (see the log above)")


def serve_processes(factory: str, host: str, port: int, processes: int, log_style: str = "json") -> None:
    """`factory` (module:function returning the app) served by `processes` processes on one port,
    under uvicorn's supervisor, which restarts a process that dies and stops them all on SIGTERM."""
    refuse_ports_in_use([(host, port, "--port")])
    uvicorn.run(factory, factory=True, host=host, port=port, workers=processes, log_level="info", access_log=False,
                log_config=_process_logging(log_style))


def _process_logging(style: str) -> dict:
    """uvicorn's own logging, plus Keepflow's lines at INFO as the other commands log them
    (keepflow/logs.py): each process is started afresh and configures its logging from this."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["keepflow"] = {"()": "keepflow.logs.handler", "style": style}
    config["loggers"]["keepflow"] = {"handlers": ["keepflow"], "level": "INFO", "propagate": False}
    config["loggers"]["alembic"] = {"level": "WARNING"}
    return config
