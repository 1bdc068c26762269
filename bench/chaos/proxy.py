"""A TCP forwarder between one branch agent and NATS that the harness can sever.

``cut("reset")`` drops every connection and refuses new ones (a router rebooting,
a line going dead with the far end noticing); ``cut("stall")`` keeps connections
open but moves no bytes (a blackholed link: the client learns nothing until its own
timeouts fire). ``restore()`` lets traffic flow again. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Literal

__all__ = ["CutMode", "LinkProxy"]

CutMode = Literal["reset", "stall"]


class LinkProxy:
    def __init__(self, target_port: int, *, name: str = "link") -> None:
        self.name = name
        self.target_port = target_port
        self.port = 0
        self.cut_mode: CutMode | None = None
        self.cuts = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self, mode: CutMode) -> None:
        self.cut_mode = mode
        self.cuts += 1
        self._flowing.clear()
        if mode == "reset":
            self._abort_all()

    async def restore(self) -> None:
        self.cut_mode = None
        self._flowing.set()

    async def close(self) -> None:
        # Release handlers waiting on a stalled link; they find the link reset and end.
        self.cut_mode = "reset"
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _is_reset(self) -> bool:
        return self.cut_mode == "reset"

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._is_reset():
            writer.transport.abort()
            return
        self._writers.add(writer)
        # A stalled link accepts the TCP handshake (the local router does) and no more.
        await self._flowing.wait()
        if self._is_reset() or writer.transport.is_closing():
            writer.transport.abort()
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        self._spawn(self._pump(reader, up_writer, writer))
        self._spawn(self._pump(up_reader, writer, up_writer))

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        source_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                # Bytes read just before a stall are held, not lost: TCP would hold them too.
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (sink, source_writer):
                w.transport.abort()
                self._writers.discard(w)
