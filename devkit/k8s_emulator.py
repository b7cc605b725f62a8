"""KMock's Kubernetes emulator, made faithful where kopf and the operator depend on it.

Stock `kmock.KubernetesEmulator` keeps objects as plain dicts: it assigns no resourceVersion,
uid or timestamps, replays every object on each watch, treats a JSON patch as a dict merge, has
no PUT, lets `/status` patches change the spec, and answers 200 to a create. kopf needs the
real semantics (its finalizer patch is guarded by a JSON-patch `test` on the resourceVersion,
its watches resume from a resourceVersion). This subclass keeps kmock's server and discovery
and serves the object API itself:

- a cluster-wide monotonic resourceVersion bumped on every write; uid, creationTimestamp,
  generation (bumped when anything but metadata/status changes);
- create 201 / 409 AlreadyExists; get/list (label selectors) / watch from a resourceVersion
  (with timeoutSeconds), from an event log, so no event between list and watch is lost;
- PATCH as JSON patch (RFC 6902; failed `test` -> 422), merge patch (RFC 7386) or strategic
  merge (treated as merge); PUT with resourceVersion preconditions (409 Conflict);
- the status subresource: writes to the main resource ignore `status`, writes to `/status`
  change only `status`; a create drops `status`;
- deletion with finalizers (deletionTimestamp, removal when the last finalizer goes), uid and
  resourceVersion preconditions (409), and garbage collection of dependents by ownerReferences
  (the kube-controller-manager's job);
- optional per-resource validators (the CRD schemas and CEL rules; RayJobs against the schema of the stored
  `rayjobs.ray.io` CRD, so replacing that CRD is a KubeRay upgrade or downgrade; Secrets and NetworkPolicies
  against Kubernetes' own OpenAPI schema, Secret data as base64, immutable Secrets) answering 422 Invalid;
- CustomResourceDefinitions as cluster-scoped objects to read (the CPTJob one and KubeRay's);
- RBAC as a caller meets it: `forbidden[token]` lists the (apiGroup, resource, verb) calls a bearer token may
  not make, `forbidden["*"]` the ones no caller may make (kopf's watch of all CRDs, which the chart does not
  grant; kopf carries on without it, as on a cluster), answered 403 Forbidden with the API server's message;
- the pod log subresource (`GET .../pods/NAME/log` with container, tailLines, limitBytes, follow) as
  the kubelet serves it: text/plain, 400 when a pod of several containers is asked without one,
  404 once the pod is gone. A log is a file on this machine (`pod_logs`), written by whoever runs
  the "container" (the KubeRay stand-in).

`EmulatorThread` runs it on a background event loop for synchronous tests.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import copy
import datetime
import json
import random
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import parsing as _kmock_parsing

Key = tuple[str, str, str]  # group, version, plural

_stock_parse_path = _kmock_parsing.parse_path


def _parse_path(path: str) -> _kmock_parsing.ParsedPath:
    """kmock reads `/api/v1/namespaces[/NAME]` as a namespace prefix without a resource (and fails);
    it is the cluster-scoped `namespaces` resource itself."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return _kmock_parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _stock_parse_path(path)


_kmock_parsing.parse_path = _parse_path
Validator = Callable[[dict[str, Any], dict[str, Any] | None], list[str]]


def _now() -> str:
    return datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _matches_selector(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "==" in term or "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class FaithfulKubernetes(kmock.KubernetesEmulator):
    """See the module docstring."""

    store: dict[tuple[Key, str | None, str], dict[str, Any]] = attrs.field(factory=dict)
    validators: dict[tuple[str, str], Validator] = attrs.field(factory=dict)
    #: (apiGroup, resource[/subresource], verb) of every API call served (the chart's RBAC is checked against it).
    requests_seen: set[tuple[str, str, str]] = attrs.field(factory=set)
    #: Calls answered 403 Forbidden (what RBAC does not grant), and the ones that were refused so.
    requests_refused: set[tuple[str, str, str]] = attrs.field(factory=set)
    #: Called as listener(key, event_type, object) on every write (benchmarks timestamp events with it).
    listeners: list[Callable[[Key, str, dict[str, Any]], None]] = attrs.field(factory=list)
    #: bearer token ("*": every caller) -> the (apiGroup, resource[/subresource], verb) calls it is denied (403).
    forbidden: dict[str, set[tuple[str, str, str]]] = attrs.field(factory=dict)
    #: (namespace, pod, container) -> the file its log is read from (what the kubelet keeps on the node).
    pod_logs: dict[tuple[str, str, str], Path] = attrs.field(factory=dict)
    _log: list[tuple[int, Key, dict[str, Any]]] = attrs.field(factory=list)
    _rv: int = 0
    _changed: asyncio.Condition | None = None

    # -- resources --------------------------------------------------------------------------

    def declare(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        namespaced: bool = True,
        subresources: tuple[str, ...] = (),
    ) -> None:
        path = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
        self.resources[path] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            verbs={"list", "watch", "get", "create", "update", "patch", "delete"},
            subresources=set(subresources),
        )

    def _info(self, key: Key) -> kmock.ResourceInfo:
        for resource in self.resources:
            if (resource.group, resource.version, resource.plural) == key:
                return self.resources[resource]
        raise kmock.KubernetesResourceNotFoundError()

    @property
    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _emit(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        self._log.append((self._rv, key, {"type": kind, "object": copy.deepcopy(obj)}))
        for listener in self.listeners:
            listener(key, kind, obj)
        async with self._condition:
            self._condition.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    # -- operations (shared by HTTP and the synchronous test helpers) -----------------------

    async def op_create(self, key: Key, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        info = self._info(key)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="namespace is required")
            meta["namespace"] = namespace
        else:
            namespace = None
        if not meta.get("name") and meta.get("generateName"):
            # As the API server: 5 characters of 27 (14 M names), retried on a collision (RetryGenerateName).
            for _ in range(8):
                meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
                if (key, namespace, meta["name"]) not in self.store:
                    break
        name = meta.get("name")
        if not name:
            raise kmock.KubernetesError(status=422, reason="Invalid", message="metadata.name: Required value")
        if (key, namespace, name) in self.store:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f'{key[2]} "{name}" already exists')
        if "status" in info.subresources:
            obj.pop("status", None)
        self._validate(key, obj, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        for transient in ("deletionTimestamp", "resourceVersion"):
            meta.pop(transient, None)
        self._bump(obj)
        self.store[(key, namespace, name)] = obj
        await self._emit(key, "ADDED", obj)
        return copy.deepcopy(obj)

    def op_get(self, key: Key, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get((key, namespace if self._info(key).namespaced else None, name))
        if obj is None:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f'{key[2]} "{name}" not found')
        return copy.deepcopy(obj)

    def op_list(self, key: Key, namespace: str | None, selector: str | None = None) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.store.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
            if k == key
            and (namespace is None or ns == namespace)
            and _matches_selector(obj.get("metadata", {}).get("labels", {}), selector)
        ]

    async def op_update(
        self,
        key: Key,
        namespace: str | None,
        name: str,
        subresource: str | None,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        precondition_rv: str | None = None,
    ) -> dict[str, Any]:
        info = self._info(key)
        namespace = namespace if info.namespaced else None
        current = self.op_get(key, namespace, name)
        meta = current["metadata"]
        if precondition_rv and precondition_rv != meta["resourceVersion"]:
            raise kmock.KubernetesError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {key[2]} "{name}": the object has been modified',
            )
        new = change(copy.deepcopy(current))
        if subresource == "status":
            new = {**current, "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif subresource:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"no subresource {subresource}")
        elif "status" in info.subresources:
            new["status"] = current.get("status")
            if new["status"] is None:
                new.pop("status")
        new_meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if fixed in meta:
                new_meta[fixed] = meta[fixed]
        if "deletionTimestamp" in meta:
            new_meta["deletionTimestamp"] = meta["deletionTimestamp"]
        if new == current:
            return current  # a no-op write does not bump the resourceVersion
        spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if subresource is None:
            self._validate(key, new, current)
            if spec_of(new) != spec_of(current):
                new_meta["generation"] = int(meta.get("generation", 1)) + 1
        self._bump(new)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            return await self._remove(key, namespace, name, new)
        self.store[(key, namespace, name)] = new
        await self._emit(key, "MODIFIED", new)
        return copy.deepcopy(new)

    async def op_delete(
        self, key: Key, namespace: str | None, name: str, preconditions: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        namespace = namespace if self._info(key).namespaced else None
        obj = self.op_get(key, namespace, name)
        meta = obj["metadata"]
        for field in ("uid", "resourceVersion"):  # DeleteOptions.preconditions, as the API server checks them
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta.get(field):
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: "
                    f"{meta.get(field)}",
                )
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                self._bump(obj)
                self.store[(key, namespace, name)] = obj
                await self._emit(key, "MODIFIED", obj)
            return obj
        return await self._remove(key, namespace, name, obj)

    async def _remove(self, key: Key, namespace: str | None, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.store.pop((key, namespace, name), None)
        if key == PODS:  # the kubelet's logs go with the pod
            for log_key in [k for k in self.pod_logs if k[:2] == (namespace, name)]:
                self.pod_logs.pop(log_key, None)
        self._bump(obj)
        await self._emit(key, "DELETED", obj)
        # Garbage collection of dependents, as the kube-controller-manager does (background cascade).
        uid = obj["metadata"].get("uid")
        for (k, ns, n), child in list(self.store.items()):
            owners = child.get("metadata", {}).get("ownerReferences", [])
            if any(ref.get("uid") == uid for ref in owners) and (k, ns, n) in self.store:
                await self.op_delete(k, ns, n)
        return obj

    def _validate(self, key: Key, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        validator = self.validators.get((key[0], key[2]))
        if validator is None:
            return
        problems = validator(new, old)
        if problems:
            kind = self._info(key).kind
            name = new.get("metadata", {}).get("name")
            raise kmock.KubernetesError(
                status=422, reason="Invalid", message=f'{kind} "{name}" is invalid: ' + "; ".join(problems)
            )

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None or not resource.plural or "/" in str(resource.plural):
            return await super()._handle(request)
        key: Key = (resource.group or "", resource.version or "", resource.plural)
        method = str(request.method).upper().rsplit(".", 1)[-1]
        watching = method == "GET" and request.params.get("watch") in ("true", "1")
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(
            method, "watch" if watching else "get" if request.name else "list"
        )
        plural = f"{key[2]}/{request.subresource}" if request.subresource else key[2]
        call = (key[0], plural, verb)
        token = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
        denied = call in self.forbidden.get("*", set()) | self.forbidden.get(token, set())
        (self.requests_refused if denied else self.requests_seen).add(call)
        try:
            if denied:
                where = f' in the namespace "{request.namespace}"' if request.namespace else ""
                raise kmock.KubernetesError(
                    status=403,
                    reason="Forbidden",
                    message=f'{plural} "{request.name or ""}" is forbidden: User "{token}" cannot {verb} resource '
                    f'"{plural}" in API group "{key[0]}"{where}',
                )
            if key == PODS and request.subresource == "log" and method == "GET" and request.name:
                return await self._pod_log(request, request.namespace or "", request.name)
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._watch(request, key)
            if method == "GET" and request.name:
                return aiohttp.web.json_response(self.op_get(key, request.namespace, request.name))
            if method == "GET":
                items = self.op_list(key, request.namespace, request.params.get("labelSelector"))
                kind = self._info(key).kind or ""
                api_version = f"{key[0]}/{key[1]}" if key[0] else key[1]
                return aiohttp.web.json_response(
                    {
                        "apiVersion": api_version,
                        "kind": f"{kind}List",
                        "metadata": {"resourceVersion": str(self._rv)},
                        "items": items,
                    }
                )
            if method == "POST" and not request.name:
                return aiohttp.web.json_response(await self.op_create(key, request.namespace, request.data), status=201)
            if method in ("PATCH", "PUT") and request.name:
                return aiohttp.web.json_response(await self._write(request, key, method))
            if method == "DELETE" and request.name:
                options = request.data if isinstance(request.data, dict) else {}
                deleted = await self.op_delete(key, request.namespace, request.name, options.get("preconditions"))
                return aiohttp.web.json_response(deleted)
            raise kmock.KubernetesError(status=405, reason="MethodNotAllowed", message=f"{method} not supported")
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    async def _pod_log(self, request: kmock.Request, namespace: str, name: str) -> aiohttp.web.StreamResponse:
        pod = self.op_get(PODS, namespace, name)
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.params.get("container") or (containers[0] if len(containers) == 1 else None)
        if container is None or container not in containers:
            message = (
                f"a container name must be specified for pod {name}, choose one of: {containers}"
                if container is None
                else f"container {container} is not valid for pod {name}"
            )
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=message)
        path = self.pod_logs.get((namespace, name, container))
        data = path.read_bytes() if path is not None and path.exists() else b""
        tail = int(request.params.get("tailLines") or 0)
        if tail:
            data = b"".join(data.splitlines(keepends=True)[-tail:])
        limit = int(request.params.get("limitBytes") or 0)
        if limit:
            data = data[:limit]
        if request.params.get("follow") not in ("true", "1"):
            return aiohttp.web.Response(body=data, content_type="text/plain")
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        await response.write(data)
        offset = path.stat().st_size if path is not None and path.exists() else 0
        try:
            while True:  # until the container ends (its pod's phase is final) or the pod is deleted
                current = self.store.get((PODS, namespace, name))
                ended = current is None or (current.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                if path is not None and path.exists() and path.stat().st_size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    offset += len(chunk)
                    await response.write(chunk)
                elif ended:
                    break
                else:
                    await asyncio.sleep(0.2)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _write(self, request: kmock.Request, key: Key, method: str) -> dict[str, Any]:
        body = request.data
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        precondition = body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None

        def change(current: dict[str, Any]) -> dict[str, Any]:
            if method == "PUT":
                return copy.deepcopy(body)
            if content_type == "application/json-patch+json":
                try:
                    return jsonpatch.apply_patch(current, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=f"json patch: {exc}") from None
            return merge_patch(current, body)

        return await self.op_update(
            key, request.namespace, request.name or "", request.subresource, change, precondition
        )

    async def _watch(self, request: kmock.Request, key: Key) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        selector = request.params.get("labelSelector")
        since = int(request.params.get("resourceVersion") or 0)
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and _matches_selector(meta.get("labels", {}), selector)
            )

        if since == 0:  # no resourceVersion: the current state first, as ADDED events
            for obj in self.op_list(key, request.namespace, selector):
                if wanted(obj):
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            since = self._rv
        try:
            while True:
                for rv, event_key, event in list(self._log):
                    if rv > since and event_key == key:
                        if wanted(event["object"]):
                            await response.write(json.dumps(event).encode() + b"\n")
                        since = rv
                seen = len(self._log)
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                async with self._condition:
                    if len(self._log) == seen:  # nothing arrived while we were writing
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._condition.wait(), timeout=min(remaining or 5.0, 5.0))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response


class EmulatorThread:
    """Runs a `FaithfulKubernetes` on its own event loop in a thread, with synchronous helpers."""

    def __init__(self, emulator: FaithfulKubernetes) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> EmulatorThread:
        self.thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes API emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=10)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    # Synchronous helpers for tests: the same code paths as HTTP requests.
    def create(self, key: Key, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.call(self.emulator.op_create(key, namespace, body))

    def get(self, key: Key, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.call(self._get(key, namespace, name))
        except kmock.KubernetesError:
            return None

    async def _get(self, key: Key, namespace: str | None, name: str) -> dict[str, Any]:
        return self.emulator.op_get(key, namespace, name)

    def list(self, key: Key, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        return self.call(self._list(key, namespace, selector))

    async def _list(self, key: Key, namespace: str | None, selector: str | None) -> builtins.list[dict[str, Any]]:
        return self.emulator.op_list(key, namespace, selector)

    def patch(
        self, key: Key, namespace: str | None, name: str, body: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return self.call(self.emulator.op_update(key, namespace, name, subresource, lambda cur: merge_patch(cur, body)))

    def delete(self, key: Key, namespace: str | None, name: str) -> dict[str, Any]:
        return self.call(self.emulator.op_delete(key, namespace, name))

    def secret(self, namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        return self.create(
            ("", "v1", "secrets"),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "data": encoded},
        )


KUBERNETES_VERSION = "1.32"  # the schema version Secrets and NetworkPolicies are validated with


def kubernetes_schema(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """A core/networking object against Kubernetes' OpenAPI schema (unknown fields are errors, as with
    `kubectl --validate=strict`); Secrets also as the API server decodes and guards them."""
    import kubernetes_validate

    problems: list[str] = []
    try:
        kubernetes_validate.validate(new, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problems.append(f"{'.'.join(map(str, exc.absolute_path))}: {exc.message}")
    if new.get("kind") == "Secret":
        for key, value in (new.get("data") or {}).items():
            try:
                base64.b64decode(str(value), validate=True)
            except ValueError:
                problems.append(f"data[{key}]: illegal base64 data")
        if (
            old is not None
            and old.get("immutable")
            and (new.get("data") != old.get("data") or not new.get("immutable"))
        ):
            problems.append("data: Forbidden: field is immutable when `immutable` is set")
    return problems


CPTJOBS: Key = ("cpt.dev", "v1alpha1", "cptjobs")
RAYJOBS: Key = ("ray.io", "v1", "rayjobs")
CONFIGMAPS: Key = ("", "v1", "configmaps")
SECRETS: Key = ("", "v1", "secrets")
EVENTS: Key = ("", "v1", "events")
PODS: Key = ("", "v1", "pods")
NAMESPACES: Key = ("", "v1", "namespaces")
NETWORK_POLICIES: Key = ("networking.k8s.io", "v1", "networkpolicies")
CRDS: Key = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def cluster_with_cpt_and_kuberay(rayjob_schema: dict[str, Any] | None = None) -> FaithfulKubernetes:
    """An emulator serving what the operator uses, validating CPTJobs (and RayJobs) like the API server."""
    from cpt_core.validation.validate import cel_violations, schema_errors

    k8s = FaithfulKubernetes()
    k8s.declare("cpt.dev", "v1alpha1", "cptjobs", "CPTJob", subresources=("status",))
    k8s.declare("ray.io", "v1", "rayjobs", "RayJob", subresources=("status",))
    k8s.declare("", "v1", "configmaps", "ConfigMap")
    k8s.declare("", "v1", "secrets", "Secret")
    k8s.declare("", "v1", "events", "Event")
    k8s.declare("", "v1", "pods", "Pod", subresources=("status", "log"))
    k8s.declare("", "v1", "namespaces", "Namespace", namespaced=False)
    k8s.declare("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
    k8s.declare("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False)
    # kopf watches all CRDs when it can (to notice new resources); the chart grants only get on rayjobs.ray.io.
    k8s.forbidden.setdefault("*", set()).update(
        ("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")
    )
    k8s.validators[("", "secrets")] = kubernetes_schema
    k8s.validators[("networking.k8s.io", "networkpolicies")] = kubernetes_schema

    def cptjob(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        return [str(p) for p in schema_errors(new) + cel_violations(new, old)]

    k8s.validators[("cpt.dev", "cptjobs")] = cptjob
    if rayjob_schema is not None:
        import jsonschema

        validators: dict[str, Any] = {}

        def rayjob(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
            """Against the stored rayjobs.ray.io CRD's v1 schema (the one given while none is stored)."""
            crd = k8s.store.get((CRDS, None, "rayjobs.ray.io"))
            version = crd["metadata"]["resourceVersion"] if crd else ""
            if version not in validators:
                schema = rayjob_schema
                if crd is not None:
                    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
                    schema = v1["schema"]["openAPIV3Schema"]
                validators.clear()
                validators[version] = jsonschema.Draft4Validator(schema)
            return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[version].iter_errors(new)]

        k8s.validators[("ray.io", "rayjobs")] = rayjob
    return k8s
