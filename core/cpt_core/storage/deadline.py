"""Hard deadlines for blocking S3 calls: at its deadline a call's sockets are shut down, so the thread
running it returns (with a connection error) instead of waiting on a server that drips a byte at a time.

botocore has per-socket-operation timeouts only (connect, read): a server that answers slowly but steadily
keeps a call, and the thread running it, for as long as it likes. `track(storage)` gives a `Storage`'s
client connection classes that register their socket with the calling thread's `Guard`; `Guard.abort()`
(from another thread, at the deadline) shuts those sockets down, and any socket the call opens later.
Written by hand: neither botocore nor urllib3 offers a total deadline for a request, and urllib3's
`Timeout(total=...)` still applies per socket read.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

_current = threading.local()


class Guard:
    """The sockets of one call (one thread); `abort()` ends them and refuses new ones."""

    def __init__(self) -> None:
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.aborted = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.aborted:
                _shut(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def guarded(guard: Guard) -> Iterator[Guard]:
    """Run the calls of this block under `guard` (in the thread that makes them)."""
    previous = getattr(_current, "guard", None)
    _current.guard = guard
    try:
        yield guard
    finally:
        _current.guard = previous


class _Tracked:
    """Mixed into botocore's connection classes: each request registers its socket with the thread's guard."""

    sock: Any

    def _register(self) -> None:
        guard = getattr(_current, "guard", None)
        if guard is not None and getattr(self, "sock", None) is not None:
            guard.add(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._register()
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        self._register()  # the socket exists by now (request() may have connected it)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


def _pool_classes() -> dict[str, type]:
    from botocore.awsrequest import (
        AWSHTTPConnection,
        AWSHTTPConnectionPool,
        AWSHTTPSConnection,
        AWSHTTPSConnectionPool,
    )

    connection = type("TrackedAWSHTTPConnection", (_Tracked, AWSHTTPConnection), {})
    secure = type("TrackedAWSHTTPSConnection", (_Tracked, AWSHTTPSConnection), {})
    return {
        "http": type("TrackedAWSHTTPConnectionPool", (AWSHTTPConnectionPool,), {"ConnectionCls": connection}),
        "https": type("TrackedAWSHTTPSConnectionPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": secure}),
    }


def track(client: Any) -> Any:
    """Make `client` (a boto3 S3 client) register its sockets with the calling thread's guard."""
    session = client._endpoint.http_session
    classes = _pool_classes()
    for manager in (getattr(session, "_manager", None), *getattr(session, "_proxy_managers", {}).values()):
        if manager is not None:
            manager.pool_classes_by_scheme = classes
    return client
