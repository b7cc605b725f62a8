"""A job's S3 endpoint against the admin policy: allowed by name, and not pointing into the cluster.

The operator calls a job's endpoint with the job's credentials (preflight, the progress file, kept logs).
An endpoint a tenant may choose freely is a request the operator sends on the tenant's behalf from inside
the cluster (server-side request forgery): so it must be allowed by name (`allowedEndpoints`), or resolve
only to public addresses -- never loopback, link-local, private or the cluster's own ranges -- unless the
admin allows that. The check resolves the name (bounded by the caller); a name that resolves differently
between this check and the call (DNS rebinding) is checked again at every reconciliation, and the
operator never echoes what an endpoint answers (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cpt_core.api.v1alpha1 import CPTJobSpec

from cpt_operator.controller.policy.admin import PRIVATE_RANGES, StoragePolicy, matches

Resolver = Callable[..., list[Any]]


def host_port(endpoint: str) -> tuple[str, int]:
    """(host, port) of an `http(s)://host[:port]` endpoint."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise ValueError(f"{endpoint}: no host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _listed(endpoint: str, patterns: list[str]) -> bool:
    host, port = host_port(endpoint)
    return matches(host, patterns) or matches(f"{host}:{port}", patterns)


def allowed_by_name(endpoint: str, policy: StoragePolicy) -> bool:
    """Named by the admin: allowed whatever it resolves to."""
    return _listed(endpoint, policy.allowed_endpoints) or _listed(endpoint, policy.private_endpoints)


def name_problem(endpoint: str | None, policy: StoragePolicy) -> str | None:
    """The refusal of `spec.storage.endpoint` by name (no DNS): the forced endpoint, the allowed list."""
    field = "spec.storage.endpoint"
    if policy.forced_endpoint is not None:
        if endpoint not in (None, policy.forced_endpoint):
            return (
                f"{field}: this cluster's storage is {policy.forced_endpoint}; leave the field unset (got {endpoint})"
            )
        return None
    if endpoint is None or not policy.allowed_endpoints or _listed(endpoint, policy.allowed_endpoints):
        return None
    return (
        f"{field}: {endpoint} is not one of the endpoints this cluster allows ({', '.join(policy.allowed_endpoints)})"
    )


def address_problem(endpoint: str, policy: StoragePolicy, resolve: Resolver = socket.getaddrinfo) -> str | None:
    """The refusal of the endpoint the operator would call, by where it resolves (blocking: DNS)."""
    if policy.allow_private_endpoints or allowed_by_name(endpoint, policy):
        return None
    host, port = host_port(endpoint)
    try:
        found = {info[4][0] for info in resolve(host, port, type=socket.SOCK_STREAM)}
    except OSError as exc:
        return f"spec.storage.endpoint: {host} does not resolve ({type(exc).__name__}); check the name"
    ranges = [ipaddress.ip_network(r) for r in (*PRIVATE_RANGES, *policy.cluster_ranges)]
    for address in sorted(found):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        inside = next((r for r in ranges if ip.version == r.version and ip in r), None)
        if inside is not None:
            return (
                f"spec.storage.endpoint: {host} resolves to {ip}, inside {inside} (loopback, link-local, private or "
                "the cluster's own addresses); the operator does not call such endpoints for a job unless the "
                "admin allows it (policy.storage.privateEndpoints)"
            )
    return None


def uses_s3(spec: CPTJobSpec) -> bool:
    """Whether the job reads or writes object storage at all (a job of local paths has no endpoint to check)."""
    resolved = spec.resolved()
    uris = [resolved.checkpoint.uri, resolved.cache_uri, resolved.model.source, resolved.model.mirror or ""]
    uris += [uri for source in resolved.data.sources for uri in source.uris]
    return any(uri.startswith("s3://") for uri in uris)


class EndpointResolver:
    """`address_problem` off the event loop, bounded, with answers kept for `ttl` seconds (every reconciliation
    asks again, so a name that starts resolving into the cluster is refused at the next one)."""

    def __init__(self, timeout: float = 3.0, ttl: float = 10.0, resolve: Resolver = socket.getaddrinfo) -> None:
        self.timeout, self.ttl, self.resolve = timeout, ttl, resolve
        self._cache: dict[tuple[str, str], tuple[float, str | None, str]] = {}

    def _check(self, endpoint: str, policy: StoragePolicy) -> tuple[str | None, str]:
        host, port = host_port(endpoint)
        addresses: list[str] = []

        def remember(*args: Any, **kwargs: Any) -> list[Any]:
            found = self.resolve(*args, **kwargs)
            addresses.extend(sorted({info[4][0] for info in found}))
            return found

        problem = address_problem(endpoint, policy, remember)
        if not addresses and problem is None:  # allowed by name: resolved for the bulkhead key only
            with contextlib.suppress(OSError):
                addresses = sorted({info[4][0] for info in self.resolve(host, port, type=socket.SOCK_STREAM)})
        return problem, f"{addresses[0]}:{port}" if addresses else endpoint

    async def check(self, endpoint: str, policy: StoragePolicy) -> tuple[str | None, str]:
        """(the refusal or None, the key of where the endpoint resolves)."""
        key = (endpoint, policy.model_dump_json())
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return cached[1], cached[2]
        try:
            problem, where = await asyncio.wait_for(asyncio.to_thread(self._check, endpoint, policy), self.timeout)
        except asyncio.TimeoutError:
            problem, where = (
                f"spec.storage.endpoint: {host_port(endpoint)[0]} did not resolve within {self.timeout:g} s",
                endpoint,
            )
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), problem, where)
        return problem, where
