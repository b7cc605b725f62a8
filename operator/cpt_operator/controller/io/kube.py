"""A small async Kubernetes API client for the few calls the operator makes besides kopf's own.

It reuses kopf's `ConnectionInfo` (service account in the cluster, kubeconfig outside, the
emulator in tests), so there is one login and no second client library. Every call the
operator makes is listed in `API_CALLS`; the Helm chart's RBAC is tested against it.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
from cpt_core.contract.names import GROUP, PLURAL, RAYJOBS

#: (group, version, plural) of the Kubernetes resources the operator makes besides ConfigMaps, and of CRDs.
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
#: Plurals that are not the kind's lower case with an `s` appended.
_PLURALS = {"NetworkPolicy": NETWORK_POLICIES[2]}

#: (apiGroup, resource, verb) of every API call the operator (kopf included) makes.
API_CALLS: set[tuple[str, str, str]] = {
    (GROUP, PLURAL, "get"),
    (GROUP, PLURAL, "list"),
    (GROUP, PLURAL, "watch"),
    (GROUP, PLURAL, "patch"),
    (GROUP, f"{PLURAL}/status", "get"),
    (GROUP, f"{PLURAL}/status", "patch"),
    (GROUP, f"{PLURAL}/status", "update"),
    (RAYJOBS[0], RAYJOBS[2], "get"),
    (RAYJOBS[0], RAYJOBS[2], "create"),
    (RAYJOBS[0], RAYJOBS[2], "delete"),
    ("", "configmaps", "get"),
    ("", "configmaps", "create"),
    ("", "configmaps", "update"),
    ("", "secrets", "get"),
    ("", "secrets", "create"),  # the job's Ray token (kuberay_auth token-secret)
    (NETWORK_POLICIES[0], NETWORK_POLICIES[2], "get"),
    (NETWORK_POLICIES[0], NETWORK_POLICIES[2], "create"),
    (NETWORK_POLICIES[0], NETWORK_POLICIES[2], "update"),  # it follows the current attempt's submitter
    (CRDS[0], CRDS[2], "get"),  # rayjobs.ray.io only (kuberay_auth auto): what the installed KubeRay supports
    ("", "pods", "list"),
    ("", "pods/log", "get"),
    ("", "events", "create"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)
        self.message = str(message)
        super().__init__(f"HTTP {status}: {message}")


class ForeignObject(RuntimeError):
    """An object with the name the operator needs exists and is not owned by the job (never adopted, never deleted)."""

    def __init__(self, obj: dict[str, Any], owner_uid: str | None) -> None:
        meta = obj.get("metadata", {})
        self.kind, self.namespace, self.name = obj.get("kind") or "object", meta.get("namespace"), meta.get("name")
        owners = [f"{r.get('kind')}/{r.get('name')} uid {r.get('uid')}" for r in meta.get("ownerReferences") or []]
        held = f"owned by {', '.join(owners)}" if owners else "without an owner"
        plural = plural_of(self.kind)
        super().__init__(
            f"{self.kind} {self.namespace}/{self.name} exists {held}, not by this CPTJob (uid {owner_uid}); it is "
            f"left alone. Delete it if it is a leftover: kubectl -n {self.namespace} delete {plural} {self.name}"
        )


def plural_of(kind: str) -> str:
    """The resource name of a kind the operator creates (`ConfigMap` -> `configmaps`)."""
    return _PLURALS.get(kind, kind.lower() + "s")


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether `obj` has an ownerReference to the object with `uid`."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid for ref in refs)


def _controller_uid(obj: dict[str, Any]) -> str | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


def _path(group: str, version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


class Kube:
    """Get, create, update and delete objects with the operator's own credentials."""

    def __init__(self, info: Any, timeout: float = 30.0) -> None:
        self.server = str(info.server).rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))
        headers = {"Accept": "application/json"}
        if getattr(info, "token", None):
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._headers = headers
        self._ssl = self._ssl_context(info)
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def _ssl_context(info: Any) -> ssl.SSLContext | bool:
        if not self_is_https(info):
            return True
        if getattr(info, "insecure", False):
            return False
        context = ssl.create_default_context(cafile=getattr(info, "ca_path", None))
        if getattr(info, "ca_data", None):
            context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
        cert, key = getattr(info, "certificate_path", None), getattr(info, "private_key_path", None)
        if getattr(info, "certificate_data", None) and getattr(info, "private_key_data", None):
            cert_file = tempfile.NamedTemporaryFile(delete=False)  # noqa: SIM115 - must outlive this scope
            key_file = tempfile.NamedTemporaryFile(delete=False)  # noqa: SIM115
            cert_file.write(base64.b64decode(info.certificate_data))
            key_file.write(base64.b64decode(info.private_key_data))
            cert_file.close()
            key_file.close()
            cert, key = cert_file.name, key_file.name
        if cert and key:
            context.load_cert_chain(cert, key)
        return context

    async def _request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._session.request(method, self.server + path, json=body, headers=headers, ssl=self._ssl) as r:
            payload = await r.json(content_type=None) if r.content_length != 0 else None
            if r.status >= 400:
                raise ApiError(r.status, payload)
            return payload

    async def get(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", _path(group, version, plural, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_owned(
        self, group: str, version: str, plural: str, namespace: str | None, name: str, owner_uid: str | None
    ) -> dict[str, Any] | None:
        """The object when it exists and `owner_uid` owns it; None when it does not exist; `ForeignObject` else."""
        obj = await self.get(group, version, plural, namespace, name)
        if obj is not None and not owned_by(obj, owner_uid):
            raise ForeignObject(obj, owner_uid)
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj` (which names its controller in ownerReferences). An existing object of that name is
        adopted only when the same controller owns it (created by an earlier, interrupted reconcile);
        anything else raises `ForeignObject`."""
        group, _, version = obj["apiVersion"].rpartition("/")
        meta = obj["metadata"]
        plural = plural_of(obj["kind"])
        try:
            return await self._request("POST", _path(group, version, plural, meta.get("namespace")), obj)
        except ApiError as exc:
            if exc.status == 409:
                existing = await self.get_owned(
                    group, version, plural, meta.get("namespace"), meta["name"], _controller_uid(obj)
                )
                if existing is not None:
                    return existing
            raise

    async def apply_configmap(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the ConfigMap, or replace its data when it exists and is ours (the spec may have changed)."""
        return await self.apply(obj, "data")

    async def apply(self, obj: dict[str, Any], field: str) -> dict[str, Any]:
        """Create `obj`, or replace its `field` (a ConfigMap's data, a NetworkPolicy's spec) when it exists, is ours
        and differs; anything else of the existing object stays."""
        group, _, version = obj["apiVersion"].rpartition("/")
        meta, plural = obj["metadata"], plural_of(obj["kind"])
        current = await self.get_owned(group, version, plural, meta["namespace"], meta["name"], _controller_uid(obj))
        if current is None:
            return await self.create(obj)
        if current.get(field) == obj[field]:
            return current
        replacement = {**current, field: obj[field]}  # carries its resourceVersion: a concurrent change is a 409
        path = _path(group, version, plural, meta["namespace"], meta["name"])
        return await self._request("PUT", path, replacement)

    async def ensure(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The existing object when it is ours (left as it is: a Secret made once), else `obj` created."""
        group, _, version = obj["apiVersion"].rpartition("/")
        meta = obj["metadata"]
        current = await self.get_owned(
            group, version, plural_of(obj["kind"]), meta["namespace"], meta["name"], _controller_uid(obj)
        )
        return current if current is not None else await self.create(obj)

    async def delete(
        self, group: str, version: str, plural: str, namespace: str | None, name: str, uid: str | None = None
    ) -> None:
        """Delete (background propagation). With `uid`, only that very object: a namesake is never deleted."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", _path(group, version, plural, namespace, name), options)
        except ApiError as exc:
            if exc.status == 409 and uid:
                return  # another object took the name: not ours to delete
            if exc.status != 404:
                raise

    async def list_objects(
        self, group: str, version: str, plural: str, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """The objects matching the label `selector`."""
        path = _path(group, version, plural, namespace) + (f"?labelSelector={quote(selector)}" if selector else "")
        return list((await self._request("GET", path) or {}).get("items") or [])

    async def patch(self, group: str, version: str, plural: str, namespace: str, name: str, patch: Any) -> Any:
        """A JSON merge patch of the object (not its status)."""
        path = _path(group, version, plural, namespace, name)
        return await self._request("PATCH", path, patch, "application/merge-patch+json")

    async def pod_log(
        self, namespace: str, pod: str, container: str | None = None, max_bytes: int = 1 << 20, tail_lines: int = 0
    ) -> tuple[bytes, int]:
        """The end of a container's log, at most `max_bytes` of it, and how many bytes before it were dropped:
        read as a stream, so a huge log costs `max_bytes` of memory, not its size."""
        kept, dropped = bytearray(), 0
        async for chunk in self.log_stream(namespace, pod, container, tail_lines=tail_lines):
            kept += chunk
            if len(kept) > max_bytes:
                dropped += len(kept) - max_bytes
                del kept[: len(kept) - max_bytes]
        return bytes(kept), dropped

    async def log_stream(
        self, namespace: str, pod: str, container: str | None = None, tail_lines: int = 0, follow: bool = False
    ) -> AsyncIterator[bytes]:
        """A container's log as it arrives (GET .../pods/POD/log); with `follow`, until the container ends."""
        params = {k: v for k, v in (("container", container), ("tailLines", tail_lines or None)) if v}
        if follow:
            params["follow"] = "true"
        query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
        path = _path("", "v1", "pods", namespace, pod) + "/log" + (f"?{query}" if query else "")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout.connect) if follow else self._timeout
        async with self._session.get(self.server + path, ssl=self._ssl, timeout=timeout) as r:
            if r.status >= 400:
                text = await r.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                raise ApiError(r.status, body)
            async for chunk in r.content.iter_chunked(1 << 16):
                yield chunk

    async def patch_status(self, group: str, version: str, plural: str, namespace: str, name: str, patch: Any) -> None:
        """A JSON merge patch of the status subresource."""
        path = _path(group, version, plural, namespace, name) + "/status"
        await self._request("PATCH", path, {"status": patch}, "application/merge-patch+json")

    async def secret_data(self, namespace: str, name: str, keys: Iterable[str]) -> dict[str, str | None] | None:
        """The Secret's values of `keys` as text; None when the Secret does not exist. A key that is not
        UTF-8 text maps to None; other keys (certificates, anything binary) are never decoded. Never logged."""
        secret = await self.get("", "v1", "secrets", namespace, name)
        if secret is None:
            return None
        raw = secret.get("data") or {}
        data: dict[str, str | None] = {}
        for key in keys:
            if key in raw:
                try:
                    data[key] = base64.b64decode(raw[key]).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    data[key] = None
            elif key in (secret.get("stringData") or {}):
                data[key] = secret["stringData"][key]
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def self_is_https(info: Any) -> bool:
    return str(info.server).startswith("https://")
