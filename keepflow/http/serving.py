"""Serving an app with uvicorn under Keepflow's own stop signal, so the worker and HTTP stop as one."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # Signals belong to stop_on_signals(), so the worker and HTTP stop as one.
        yield


async def serve_http(app: FastAPI, host: str, port: int, stop: asyncio.Event) -> None:
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False))

    async def stop_when_asked() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_asked())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    if not server.started:
        raise RuntimeError(f"the HTTP server did not start on {host}:{port} (see the log above)")
