"""A small async Kubernetes API client for the few calls the operator makes besides kopf's own.

It reuses kopf's `ConnectionInfo` (service account in the cluster, kubeconfig outside, the
emulator in tests), so there is one login and no second client library. Every call the
operator makes is listed in `API_CALLS`; the Helm chart's RBAC is tested against it.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from typing import Any

import aiohttp

#: (apiGroup, resource, verb) of every API call the operator (kopf included) makes.
API_CALLS: set[tuple[str, str, str]] = {
    ("cpt.dev", "cptjobs", "get"),
    ("cpt.dev", "cptjobs", "list"),
    ("cpt.dev", "cptjobs", "watch"),
    ("cpt.dev", "cptjobs", "patch"),
    ("cpt.dev", "cptjobs/status", "get"),
    ("cpt.dev", "cptjobs/status", "patch"),
    ("cpt.dev", "cptjobs/status", "update"),
    ("ray.io", "rayjobs", "get"),
    ("ray.io", "rayjobs", "create"),
    ("ray.io", "rayjobs", "delete"),
    ("", "configmaps", "get"),
    ("", "configmaps", "create"),
    ("", "configmaps", "update"),
    ("", "secrets", "get"),
    ("", "events", "create"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")


def _path(group: str, version: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return f"{base}/{name}" if name else base


class Kube:
    """Get, create, update and delete objects with the operator's own credentials."""

    def __init__(self, info: Any) -> None:
        self.server = str(info.server).rstrip("/")
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
            self._session = aiohttp.ClientSession(headers=self._headers)
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

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create; an existing object with the same name is returned instead (idempotent)."""
        group, _, version = obj["apiVersion"].rpartition("/")
        meta = obj["metadata"]
        plural = obj["kind"].lower() + "s"
        try:
            return await self._request("POST", _path(group, version, plural, meta.get("namespace")), obj)
        except ApiError as exc:
            if exc.status == 409:
                existing = await self.get(group, version, plural, meta.get("namespace"), meta["name"])
                if existing is not None:
                    return existing
            raise

    async def apply_configmap(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the ConfigMap, or replace its data when it exists (the spec may have changed)."""
        meta = obj["metadata"]
        current = await self.get("", "v1", "configmaps", meta["namespace"], meta["name"])
        if current is None:
            return await self.create(obj)
        replacement = {**current, "data": obj["data"]}
        path = _path("", "v1", "configmaps", meta["namespace"], meta["name"])
        return await self._request("PUT", path, replacement)

    async def delete(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> None:
        try:
            await self._request(
                "DELETE", _path(group, version, plural, namespace, name), {"propagationPolicy": "Background"}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data; None when it does not exist. Never logged."""
        secret = await self.get("", "v1", "secrets", namespace, name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def self_is_https(info: Any) -> bool:
    return str(info.server).startswith("https://")
