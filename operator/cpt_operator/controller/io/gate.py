"""Bounded storage I/O: every S3 call the operator makes goes through one `StorageGate`.

boto3 is synchronous, so its calls run on threads. asyncio's default pool has
min(32, cpus + 4) threads (6 on a 2-core node): six jobs whose endpoint never answers fill it
and every other job waits. Here the calls run on a pool of the operator's own, and:

- a bulkhead per tenant (namespace): at most `per_tenant` calls in flight for one namespace's jobs,
  whatever endpoints they name, so one tenant can never hold more than that many threads;
- a bulkhead per endpoint: at most `per_endpoint` calls in flight to one endpoint, keyed by where
  it resolves (`host:port` strings are free to vary, addresses are not); further calls wait
  *without a thread*;
- a breaker: after a call found the endpoint unreachable (refused, or no answer within the
  client's connect/read timeouts), calls to it fail at once with the same message for
  `cooldown` seconds, so a hundred jobs on a dead endpoint do not each wait for a timeout;
- a deadline on the whole operation (a preflight makes several calls): at the deadline its
  sockets are shut down (`cpt_core.storage.deadline`), so the thread returns instead of waiting on
  a server that drips its answer a byte at a time.

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
from cpt_core.storage.deadline import Guard, guarded

T = TypeVar("T")


def endpoint_of(storage: Storage) -> str:
    """The key of an endpoint: its URL, or AWS S3 in a region."""
    return storage.settings.endpoint or f"AWS S3 ({storage.settings.region})"


def _guarded(guard: Guard, fn: Callable[..., T], *args: Any) -> T:
    with guarded(guard):
        return fn(*args)


def _finished(slots: tuple[asyncio.Semaphore, ...], future: asyncio.Future[Any]) -> None:
    for slot in slots:
        slot.release()
    if not future.cancelled():
        future.exception()  # retrieved: a call given up on by its deadline is not reported as unhandled


class StorageGate:
    """A thread pool with a bulkhead and a breaker per endpoint (see the module docstring)."""

    def __init__(
        self,
        threads: int = 32,
        per_endpoint: int = 8,
        cooldown: float = 15.0,
        deadline: float = 60.0,
        per_tenant: int = 4,
    ) -> None:
        self.per_endpoint, self.per_tenant, self.cooldown, self.deadline = per_endpoint, per_tenant, cooldown, deadline
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cpt-storage")
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tenants: dict[str, asyncio.Semaphore] = {}
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

    @staticmethod
    def _semaphore(table: dict[str, asyncio.Semaphore], key: str, size: int) -> asyncio.Semaphore:
        slot = table.get(key)
        if slot is None:
            if len(table) >= 1024:  # forget idle keys (jobs and endpoints come and go)
                for idle in [k for k, s in table.items() if not s.locked() and s._value == size]:
                    del table[idle]
            slot = table[key] = asyncio.Semaphore(size)
        return slot

    async def _acquire(self, slot: asyncio.Semaphore, what: str, size: int) -> None:
        try:
            await asyncio.wait_for(slot.acquire(), self.deadline)
        except asyncio.TimeoutError:
            raise Unreachable(
                f"{what}: {size} earlier S3 calls were still running after {self.deadline:g} s; check "
                "spec.storage.endpoint"
            ) from None

    async def run(
        self, storage: Storage, fn: Callable[..., T], *args: Any, tenant: str = "", endpoint: str | None = None
    ) -> T:
        """`fn(*args)` on the pool, bounded as described; raises `Unreachable` when the endpoint is not answering.

        `tenant` is the job's namespace; `endpoint` the key of where the call goes (its resolved address;
        default: the storage's endpoint URL)."""
        endpoint = endpoint or endpoint_of(storage)
        self._check_breaker(endpoint)
        own = self._semaphore(self._tenants, tenant, self.per_tenant)
        await self._acquire(own, f"namespace {tenant or '-'}", self.per_tenant)
        slot = self._semaphore(self._slots, endpoint, self.per_endpoint)
        try:
            await self._acquire(slot, f"S3 endpoint {endpoint}", self.per_endpoint)
        except BaseException:
            own.release()
            raise
        try:
            self._check_breaker(endpoint)  # it may have tripped while this call waited
        except Unreachable:
            slot.release()
            own.release()
            raise
        guard = Guard()
        future = asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(_guarded, guard, fn, *args))
        future.add_done_callback(functools.partial(_finished, (slot, own)))  # the slots are free when the thread is
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.deadline)
        except asyncio.TimeoutError:
            guard.abort()  # the call's sockets go: its thread returns with a connection error
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
