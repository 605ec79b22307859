"""A fault-injecting TCP proxy the tests put between our processes and a server (Postgres, Redis, S3).

It runs an asyncio loop in a thread of the test process. Faults:
- `refuse()`: stop listening and reset every open connection (the server is down: connection refused);
- `blackhole()`: keep accepting, forward nothing either way (a hung server, or a partition);
- `cut()`: reset the open connections once (a restart, a failover);
- `slow(bytes_per_second)`: forward at that rate (a congested link);
- `restore()`: back to forwarding at full speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any

from tests.support.services import free_port

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.mode = "up"  # up | blackhole
        self.rate: float | None = None  # bytes per second, None: unlimited
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    # -- control (from the test's thread) ---------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def refuse(self) -> None:
        self._call(self._refuse())

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def cut(self) -> None:
        self._call(self._reset_all())

    def slow(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second

    def restore(self) -> None:
        self.mode, self.rate = "up", None
        self._call(self._listen())

    def url_for(self, url: str) -> str:
        """`url` with the target's host:port replaced by the proxy's."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}")

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- the loop -----------------------------------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._reset_all()

    async def _reset_all(self) -> None:
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()

    async def _shutdown(self) -> None:
        await self._refuse()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._connections.add(client_writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            self._connections.discard(client_writer)
            return
        self._connections.add(upstream_writer)
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, client_writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_writer, upstream_writer):
            self._connections.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(CHUNK):
                if self.mode == "blackhole":
                    continue  # swallowed: the other side never hears of it
                if self.rate:
                    await asyncio.sleep(len(data) / self.rate)
                writer.write(data)
                await writer.drain()
