"""A real TCP endpoint that misbehaves on demand, for tests and the soak benchmark.

`FaultyEndpoint()` is an S3 endpoint that accepts connections and never answers (what a hung server or a
black-holed load balancer looks like to a client). `FaultyEndpoint(drip=seconds)` answers, one byte
every `seconds`, forever: each read of the client succeeds in time, so per-read timeouts never fire (a
slow-drip server holds a call as long as it likes unless the caller has a total deadline).
`FaultyEndpoint(target=(host, port))` forwards to a real server (SeaweedFS) until `hang()` is called:
from then on responses are swallowed, also on connections the client already pools, until `heal()`. It
counts connections (total and the peak in flight), so tests can see how many a client holds open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


class FaultyEndpoint:
    def __init__(self, target: tuple[str, int] | None = None, drip: float | None = None) -> None:
        self.target = target
        self.drip = drip
        self.hanging = target is None
        self.connections = 0
        self.active = 0
        self.peak = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="faulty-endpoint", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hang(self) -> None:
        self.hanging = True

    def heal(self) -> None:
        if self.target is None:
            raise RuntimeError("a black hole has nothing to forward to")
        self.hanging = False

    def reset_counts(self) -> None:
        self.connections, self.peak = 0, self.active

    # -- server ----------------------------------------------------------------------------

    def start(self) -> FaultyEndpoint:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the faulty endpoint did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultyEndpoint:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.drip is not None:
                await reader.read(65536)
                for byte in b"HTTP/1.1 200 OK\r\nx-drip: " + b"a" * 100_000:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(self.drip)
                return
            if self.target is None:
                while await reader.read(65536):  # read the request, never answer
                    pass
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, upstream, False), self._pipe(up_reader, writer, True))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.active -= 1
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, response: bool) -> None:
        while data := await source.read(65536):
            if response and self.hanging:
                continue  # swallowed: the client waits for an answer that never comes
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(Exception):
            sink.close()
