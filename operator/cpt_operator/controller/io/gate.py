"""Bounded storage I/O: every S3 call the operator makes goes through one `StorageGate`.

boto3 is synchronous, so its calls run on threads. asyncio's default pool has
min(32, cpus + 4) threads (6 on a 2-core node): six jobs whose endpoint never answers fill it
and every other job waits. Here the calls run on a pool of the operator's own, and per endpoint:

- a bulkhead: at most `per_endpoint` calls in flight; further calls wait *without a thread*,
  so a dead endpoint can hold at most that many threads, whatever the number of its jobs;
- a breaker: after a call found the endpoint unreachable (refused, or no answer within the
  client's connect/read timeouts), calls to it fail at once with the same message for
  `cooldown` seconds, so a hundred jobs on a dead endpoint do not each wait for a timeout;
- a deadline on the whole operation (a preflight makes several calls).

The clients themselves carry short connect/read timeouts and bounded retries
(`OperatorSettings.s3_*`). A slow or dead endpoint costs the jobs that use it, never the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cpt_core.storage import Storage, Unreachable

T = TypeVar("T")


def endpoint_of(storage: Storage) -> str:
    """The key of an endpoint: its URL, or AWS S3 in a region."""
    return storage.settings.endpoint or f"AWS S3 ({storage.settings.region})"


def _finished(slot: asyncio.Semaphore, future: asyncio.Future[Any]) -> None:
    slot.release()
    if not future.cancelled():
        future.exception()  # retrieved: a call given up on by its deadline is not reported as unhandled


class StorageGate:
    """A thread pool with a bulkhead and a breaker per endpoint (see the module docstring)."""

    def __init__(self, threads: int = 32, per_endpoint: int = 8, cooldown: float = 15.0, deadline: float = 60.0):
        self.per_endpoint, self.cooldown, self.deadline = per_endpoint, cooldown, deadline
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cpt-storage")
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._down: dict[str, tuple[float, str]] = {}

    def _check_breaker(self, endpoint: str) -> None:
        down = self._down.get(endpoint)
        if down is not None:
            until, message = down
            left = until - time.monotonic()
            if left > 0:
                raise Unreachable(f"{message} (calls to this endpoint are skipped for another {left:.0f} s)")
            self._down.pop(endpoint, None)

    def _trip(self, endpoint: str, message: str) -> None:
        self._down[endpoint] = (time.monotonic() + self.cooldown, message)

    def _slot(self, endpoint: str) -> asyncio.Semaphore:
        slot = self._slots.get(endpoint)
        if slot is None:
            if len(self._slots) >= 1024:  # forget idle endpoints (jobs come and go)
                for key in [k for k, s in self._slots.items() if not s.locked() and s._value == self.per_endpoint]:
                    del self._slots[key]
            slot = self._slots[endpoint] = asyncio.Semaphore(self.per_endpoint)
        return slot

    async def run(self, storage: Storage, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the pool, bounded as described; raises `Unreachable` when the endpoint is not answering."""
        endpoint = endpoint_of(storage)
        self._check_breaker(endpoint)
        slot = self._slot(endpoint)
        try:
            await asyncio.wait_for(slot.acquire(), self.deadline)
        except asyncio.TimeoutError:
            raise Unreachable(
                f"S3 endpoint {endpoint}: {self.per_endpoint} earlier calls were still running after "
                f"{self.deadline:g} s; check spec.storage.endpoint"
            ) from None
        try:
            self._check_breaker(endpoint)  # it may have tripped while this call waited
        except Unreachable:
            slot.release()
            raise
        future = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))
        future.add_done_callback(functools.partial(_finished, slot))  # the slot is free when the thread is
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.deadline)
        except asyncio.TimeoutError:
            message = f"S3 endpoint {endpoint}: no result within {self.deadline:g} s; check spec.storage.endpoint"
            self._trip(endpoint, message)
            raise Unreachable(message) from None
        except Unreachable as exc:
            self._trip(endpoint, str(exc))
            raise
        self._down.pop(endpoint, None)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
