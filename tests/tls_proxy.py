"""TLS in front of a plain-text Temporal server, the way a load balancer or Temporal Cloud's edge is.

`temporal server start-dev` has no TLS flags, so the tests put this proxy in front of it: it
terminates TLS (advertising ALPN `h2`, which gRPC clients insist on), optionally demands a client
certificate signed by the test's CA (mTLS), and after the handshake copies bytes both ways. gRPC
speaks HTTP/2 with prior knowledge, so nothing above TLS needs translating.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import trustme


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def server_context(ca: trustme.CA, client_ca: trustme.CA | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context


@contextmanager
def tls_proxy(upstream: str, ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> Iterator[str]:
    """Serve TLS on a free loopback port for as long as the block runs; yields its address.

    It runs on its own thread and event loop, so a test that blocks its own loop (a synchronous
    call, a slow fixture) cannot stall the handshakes of the clients it is testing."""
    host, port = upstream.rsplit(":", 1)
    context = server_context(ca, client_ca)
    loop = asyncio.new_event_loop()
    ready: list[str] = []
    started = threading.Event()
    connections: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def serve() -> asyncio.Server:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        ready.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        started.set()
        return server

    async def close(server: asyncio.Server) -> None:
        server.close()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.1)  # let the transports' close callbacks run before the loop closes

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(serve())
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(close(server))
            loop.close()

    thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
