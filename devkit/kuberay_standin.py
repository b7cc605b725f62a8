"""A stand-in for KubeRay in the test suite: runs each RayJob's entrypoint for real on this machine.

It watches RayJobs in the Kubernetes API emulator and, for each new one, does what KubeRay and
the Ray head would: mounts the spec ConfigMap (as a file), resolves the `secretKeyRef`
environment from the emulator's Secrets, runs the entrypoint (`cpt train ...`, which starts a
local Ray because no RAY_ADDRESS is set), and writes the RayJob status as KubeRay does
(Initializing -> Running -> Complete/SUCCEEDED or Failed/FAILED). Deleting a RayJob kills its
process group, as deleting its Ray cluster would.

With `rayClusterSpec.authOptions.mode: token` it sets up Ray's token authentication as KubeRay 1.6+ does:
every Ray container and the driver get RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the `auth_token` key of
the `secretName` Secret (or of a Secret it generates, named after the Ray cluster, without one), unless the
container already sets them. The driver's local Ray then runs with token authentication.

It also creates the pods KubeRay would, with the names and labels KubeRay gives them, owned by the
RayJob (KubeRay puts the RayCluster and the submitter Job in between; garbage collection ends the
same): the submitter pod of the Job (`batch.kubernetes.io/job-name=<rayjob>`, container
`ray-job-submitter`), whose log is the entrypoint's output as `ray job submit` follows the driver;
the head (`ray.io/node-type=head`) and one pod per worker replica, from the RayJob's pod templates.
Their logs are files served by the emulator's pod log API. Only the driver runs anything here (a
local Ray inside it), so the head's and workers' logs hold a few lines saying so, where KubeRay's
would hold `ray start` output. The submitter pod ends Succeeded/Failed with the entrypoint; the
Ray pods stay Running until the RayJob is deleted, as a cluster kept after its job does.
"""

from __future__ import annotations

import base64
import copy
import os
import random
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.k8s_emulator import CONFIGMAPS, PODS, RAYJOBS, SECRETS, EmulatorThread


@dataclass
class Run:
    name: str
    uid: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False
    submitter: str = ""
    #: The Ray authentication the driver ran with (RAY_AUTH_MODE; the token itself is not kept).
    auth_mode: str | None = None


@dataclass
class KubeRayStandIn:
    cluster: EmulatorThread
    workdir: Path
    #: Extra environment per RayJob name (e.g. test hooks for one attempt).
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> KubeRayStandIn:
        self._thread = threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for run in self.runs.values():
            self._kill(run)

    def _status(self, namespace: str, name: str, **status: Any) -> None:
        if self.cluster.get(RAYJOBS, namespace, name) is not None:
            self.cluster.patch(RAYJOBS, namespace, name, {"status": status}, subresource="status")

    def _env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env = dict(os.environ)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = self.cluster.get(SECRETS, namespace, ref["name"]) or {}
                value = (secret.get("data") or {}).get(ref["key"])
                if value is not None:
                    env[item["name"]] = base64.b64decode(value).decode()
                elif not ref.get("optional"):
                    raise RuntimeError(f"secret key {ref['name']}/{ref['key']} missing: the pod would not start")
        env["CPT_CACHE_DIR"] = str(self.workdir / "node-cache")
        env.pop("RAY_ADDRESS", None)
        for key in [k for k in env if k.startswith("CPT_")]:
            env.pop(key)  # the pod gets only what the RayJob and extra_env give it
        return env

    def _with_auth(self, rayjob: dict[str, Any], cluster_name: str, container: dict[str, Any]) -> dict[str, Any]:
        """`container` with the environment KubeRay's SetContainerTokenAuthEnvVars gives it (v1.7.0)."""
        auth = rayjob["spec"]["rayClusterSpec"].get("authOptions") or {}
        if auth.get("mode") != "token":
            return container
        secret = auth.get("secretName") or cluster_name
        meta = rayjob["metadata"]
        if not auth.get("secretName") and self.cluster.get(SECRETS, meta["namespace"], secret) is None:
            token = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"]}
            self.cluster.create(
                SECRETS,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": secret, "namespace": meta["namespace"], "ownerReferences": [owner]},
                    "data": {"auth_token": token},
                },
            )
        env = list(container.get("env", []))
        names = {e["name"] for e in env}
        if "RAY_AUTH_MODE" not in names:
            env.append({"name": "RAY_AUTH_MODE", "value": "token"})
        if "RAY_AUTH_TOKEN" not in names:
            ref = {"name": secret, "key": "auth_token"}
            env.append({"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": ref}})
        return {**container, "env": env}

    def _launch(self, rayjob: dict[str, Any]) -> None:
        meta = rayjob["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        cluster_name = f"{name}-{_suffix()}"
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        container = self._with_auth(rayjob, cluster_name, head["containers"][0])
        volume = next(v for v in head["volumes"] if "configMap" in v)
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        configmap = self.cluster.get(CONFIGMAPS, namespace, volume["configMap"]["name"])
        self._status(namespace, name, jobDeploymentStatus="Initializing", jobStatus="")
        if configmap is None:
            self._status(
                namespace,
                name,
                jobDeploymentStatus="Failed",
                jobStatus="FAILED",
                reason="SubmissionFailed",
                message="configmap not found",
            )
            return
        root = self.workdir / name
        spec_dir = root / "spec"
        spec_dir.mkdir(parents=True, exist_ok=True)
        for key, value in configmap["data"].items():
            (spec_dir / key).write_text(value)
        args = shlex.split(rayjob["spec"]["entrypoint"].replace(mount["mountPath"], str(spec_dir)))
        assert args[0] == "cpt", args
        log = root / "entrypoint.log"
        env = {**self._env(namespace, container), **self.extra_env.get(name, {})}
        process = subprocess.Popen(
            [sys.executable, "-m", "cpt_core.cli", *args[1:]],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=root,
        )
        self.runs[name] = Run(name, meta["uid"], process, log, auth_mode=env.get("RAY_AUTH_MODE"))
        self.runs[name].submitter = self._pods(rayjob, cluster_name, root, log)
        self._status(
            namespace,
            name,
            jobDeploymentStatus="Running",
            jobStatus="RUNNING",
            dashboardURL=f"http://127.0.0.1:8265/{name}",
            rayClusterName=cluster_name,
        )

    def _pod(self, rayjob: dict[str, Any], name: str, labels: dict[str, str], spec: dict[str, Any]) -> None:
        meta = rayjob["metadata"]
        owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"]}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels, "ownerReferences": [owner]},
            "spec": spec,
        }
        self.cluster.create(PODS, pod)
        self.cluster.patch(PODS, meta["namespace"], name, {"status": {"phase": "Running"}}, subresource="status")

    def _pods(self, rayjob: dict[str, Any], cluster_name: str, root: Path, driver_log: Path) -> str:
        """The submitter, head and worker pods of the RayJob, with their logs; returns the submitter's name."""
        namespace, name = rayjob["metadata"]["namespace"], rayjob["metadata"]["name"]
        logs = self.cluster.emulator.pod_logs
        submitter = f"{name}-{_suffix()}"
        labels = {"batch.kubernetes.io/job-name": name, "job-name": name, "ray.io/originated-from-cr-name": name}
        self._pod(rayjob, submitter, labels, {"containers": [{"name": "ray-job-submitter", "image": "ray"}]})
        logs[(namespace, submitter, "ray-job-submitter")] = driver_log
        cluster = rayjob["spec"]["rayClusterSpec"]
        groups = [("head", "headgroup", f"{cluster_name}-head-{_suffix()}", cluster["headGroupSpec"])]
        for group in cluster["workerGroupSpecs"]:
            for _ in range(group.get("replicas", 1)):
                pod = f"{cluster_name}-{group['groupName']}-worker-{_suffix()}"
                groups.append(("worker", group["groupName"], pod, group))
        for node_type, group_name, pod, spec in groups:
            template = copy.deepcopy(spec["template"])
            containers = template["spec"]["containers"]
            containers[0] = self._with_auth(rayjob, cluster_name, containers[0])
            labels = {
                **(template.get("metadata") or {}).get("labels", {}),
                "ray.io/cluster": cluster_name,
                "ray.io/node-type": node_type,
                "ray.io/group": group_name,
            }
            self._pod(rayjob, pod, labels, template["spec"])
            container = template["spec"]["containers"][0]["name"]
            path = root / f"{pod}.log"
            path.write_text(
                f"[kuberay stand-in] {node_type} of Ray cluster {cluster_name} (RayJob {name}): the stand-in runs no "
                "`ray start` here; the entrypoint runs a local Ray inside the driver, whose output is the "
                "submitter pod's log\n"
            )
            logs[(namespace, pod, container)] = path
        return submitter

    def _end_submitter(self, namespace: str, run: Run, code: int) -> None:
        if run.submitter and self.cluster.get(PODS, namespace, run.submitter) is not None:
            phase = "Succeeded" if code == 0 else "Failed"
            self.cluster.patch(PODS, namespace, run.submitter, {"status": {"phase": phase}}, subresource="status")

    def _kill(self, run: Run) -> None:
        if run.process.poll() is None:
            run.killed = True
            os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait()

    def _loop(self) -> None:
        finished: set[str] = set()
        while not self._stop.is_set():
            try:
                current = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in self.cluster.list(RAYJOBS)}
                for (_, name), rayjob in current.items():
                    if name not in self.runs and name not in finished:
                        self._launch(rayjob)
                for name, run in list(self.runs.items()):
                    key = next(((ns, n) for ns, n in current if n == name), None)
                    if key is None:  # RayJob deleted: its cluster goes away
                        self._kill(run)
                        continue
                    code = run.process.poll()
                    if code is not None and name not in finished:
                        finished.add(name)
                        self._end_submitter(key[0], run, code)
                        if code == 0:
                            self._status(*key, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
                        else:
                            why = "head node lost" if run.killed else f"entrypoint exited with {code}"
                            self._status(
                                *key, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=why
                            )
            except Exception as exc:
                print(f"kuberay stand-in: {exc}", file=sys.stderr)
            time.sleep(0.5)


def _suffix() -> str:
    """Five characters as Kubernetes' generateName and KubeRay's cluster names use."""
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
