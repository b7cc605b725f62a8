"""Operator soak: jobs created and deleted in waves, with hanging S3 endpoints mixed in.

`python bench/operator.py --soak [--soak-jobs 1000] [--wave 100] [--hanging-share 0.1]`

The operator runs as a separate process (`cpt operator`, logged in with a kubeconfig) against
KMock's Kubernetes emulator (made faithful) and SeaweedFS in this process. Each wave creates
`--wave` CPTJobs at once; a share of them point `spec.storage.endpoint` at TCP endpoints that
accept connections and never answer. The healthy jobs are driven through their lifecycle as
KubeRay and the trainer would (RayJob Running + a progress file -> Running; Complete + a
succeeded progress file -> Succeeded); then the whole wave is deleted.

Reference, in the same invocation and against the same operator process: a first wave with no
hanging endpoint. Figures (absolute): the operator's RSS over time (sampled every second, and
at the end of each wave), p50/p95 CPTJob-created -> RayJob-created latency of the healthy jobs
(reference wave vs soak waves), phase events per phase transition (must be exactly 1, with no
duplicate), StorageUnreachable warnings per hanging job (exactly 1), and the wall time.

Writes bench/results/operator-soak.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"Pending", "Preparing", "Running", "Restarting", "Suspended", "Succeeded", "Failed"}
NAMESPACE = "bench-soak"


class Recorder:
    """Listens to every write the emulator serves (called on its thread): RayJob creation times,
    phase transitions and events of the soak namespace."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rayjob_at: dict[str, float] = {}
        self.phase: dict[str, str | None] = {}
        #: Phases each job was seen in. Every job enters Pending first, also when one reconciliation
        #: takes it on to Preparing and only the last phase is written.
        self.entered: defaultdict[str, set[str]] = defaultdict(lambda: {"Pending"})
        self.events: Counter[tuple[str, str]] = Counter()

    def __call__(self, key: Any, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        if meta.get("namespace") != NAMESPACE:
            return
        with self.lock:
            if key[2] == "rayjobs" and kind == "ADDED":
                self.rayjob_at.setdefault(meta["labels"]["cpt.dev/job"], time.perf_counter())
            elif key[2] == "cptjobs" and kind != "DELETED":
                phase = (obj.get("status") or {}).get("phase")
                name = meta["name"]
                if phase is not None:
                    self.entered[name].add(phase)
                self.phase[name] = phase
            elif key[2] == "events" and kind == "ADDED":
                self.events[(obj["involvedObject"]["name"], obj["reason"])] += 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def soak(jobs: int, wave: int, hanging_share: float, work: Path) -> dict[str, Any]:
    from devkit.cluster import cluster_job, create_secret, start_cluster, upload_example_data, wait_for
    from devkit.faulty_endpoint import FaultyEndpoint
    from devkit.k8s_emulator import CPTJOBS, RAYJOBS
    from devkit.seaweed import SeaweedS3

    from cpt_core.api.v1alpha1.status import OutputStatus
    from cpt_core.api.progress import Progress, TrainingProgress

    results: dict[str, Any] = {"jobs": jobs, "wave": wave, "hanging_share": hanging_share, "waves": []}
    with SeaweedS3(work / "s3") as s3, FaultyEndpoint() as hole_a, FaultyEndpoint() as hole_b:
        upload_example_data(s3)
        cluster = start_cluster()
        recorder = Recorder()
        cluster.emulator.listeners.append(recorder)
        create_secret(cluster, s3, namespace=NAMESPACE)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
            "users": [{"name": "bench", "user": {}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "bench"}}],
        }
        (work / "kubeconfig").write_text(json.dumps(config))  # JSON is YAML
        env = {
            **os.environ,
            "KUBECONFIG": str(work / "kubeconfig"),
            "CPT_OPERATOR_POLL_SECONDS": "3",
            "CPT_OPERATOR_PREFLIGHT_BACKOFF_SECONDS": "5",
            "CPT_OPERATOR_PREFLIGHT_BACKOFF_MAX_SECONDS": "30",
        }
        cmd = [sys.executable, "-m", "cpt_core.cli", "operator", "-n", NAMESPACE, "--metrics-port", "0"]
        log = (work / "operator.log").open("wb")
        process = subprocess.Popen([*cmd, "--health-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:
            while not stop.wait(1.0):
                if process.poll() is None:
                    samples.append((time.perf_counter() - t0, rss_mb(process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client = s3.client()

        def run_wave(label: str, size: int, share: float) -> None:
            started = time.perf_counter()
            n_hanging = round(size * share)
            names = [f"{label}-{i:04d}" for i in range(size)]
            hanging = set(names[:n_hanging])
            healthy = [n for n in names if n not in hanging]
            created: dict[str, float] = {}
            for i, name in enumerate(names):
                doc = cluster_job(s3, name, namespace=NAMESPACE)
                if name in hanging:
                    doc["spec"]["storage"]["endpoint"] = (hole_a if i % 2 else hole_b).url
                created[name] = time.perf_counter()
                cluster.create(CPTJOBS, doc)
            wait_for(lambda: all(n in recorder.rayjob_at for n in healthy), 600, 0.2, f"{label}: RayJobs")
            stages = {"rayjobs": time.perf_counter() - started}
            latencies = [recorder.rayjob_at[n] - created[n] for n in healthy]
            for name in healthy:  # KubeRay and the trainer: the cluster is up, training reports
                cluster.patch(
                    RAYJOBS,
                    NAMESPACE,
                    f"{name}-a1",
                    {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}},
                    subresource="status",
                )
                uid = cluster.get(CPTJOBS, NAMESPACE, name)["metadata"]["uid"]
                running = Progress(
                    job=name,
                    uid=uid,
                    attempt=1,
                    state="running",
                    progress=TrainingProgress(step=10, total_steps=30),
                )
                client.put_object(
                    Bucket=s3.bucket, Key=f"runs/{name}/_status/progress.json", Body=running.to_json().encode()
                )
            wait_for(lambda: all(recorder.phase.get(n) == "Running" for n in healthy), 600, 0.5, "Running")
            stages["running"] = time.perf_counter() - started
            for name in healthy:
                uid = cluster.get(CPTJOBS, NAMESPACE, name)["metadata"]["uid"]
                done = Progress(
                    job=name,
                    uid=uid,
                    attempt=1,
                    state="succeeded",
                    progress=TrainingProgress(step=30, total_steps=30),
                    output=OutputStatus(model_uri=f"s3://{s3.bucket}/runs/{name}/final/"),
                )
                client.put_object(
                    Bucket=s3.bucket, Key=f"runs/{name}/_status/progress.json", Body=done.to_json().encode()
                )
                cluster.patch(
                    RAYJOBS,
                    NAMESPACE,
                    f"{name}-a1",
                    {"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}},
                    subresource="status",
                )
            wait_for(lambda: all(recorder.phase.get(n) == "Succeeded" for n in healthy), 600, 0.5, "Succeeded")
            stages["succeeded"] = time.perf_counter() - started
            if hanging:
                wait_for(
                    lambda: all(recorder.events[(n, "StorageUnreachable")] >= 1 for n in hanging),
                    600,
                    0.5,
                    f"{label}: StorageUnreachable on the hanging jobs",
                )
            stages["warned"] = time.perf_counter() - started
            time.sleep(2)  # let the last events land
            for name in names:
                cluster.delete(CPTJOBS, NAMESPACE, name)
            wait_for(lambda: not cluster.list(CPTJOBS, NAMESPACE), 120, 0.5, f"{label}: deleted")
            stages["deleted"] = time.perf_counter() - started
            time.sleep(1)
            wave_result = {
                "label": label,
                "jobs": size,
                "hanging": n_hanging,
                "latency_p50_s": statistics.median(latencies),
                "latency_p95_s": percentile(latencies, 0.95),
                "seconds": time.perf_counter() - started,
                "rss_mb": rss_mb(process.pid),
                "at_s": time.perf_counter() - t0,
                "stages_s": stages,
            }
            results["waves"].append(wave_result)
            print(
                f"{label:10s} {size:4d} jobs ({n_hanging:3d} hanging)  create->RayJob p50 "
                f"{wave_result['latency_p50_s']:.3f}s p95 {wave_result['latency_p95_s']:.3f}s  "
                f"wave {wave_result['seconds']:5.1f}s ("
                + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())
                + f")  RSS {wave_result['rss_mb']:.0f} MB",
                flush=True,
            )

        try:
            time.sleep(3)  # start-up, login, first list/watch
            if process.poll() is not None:
                raise RuntimeError(f"the operator exited: {(work / 'operator.log').read_text()[-2000:]}")
            run_wave("warm-up", 20, 0.0)  # imports, first clients, first schema compilations: not measured
            results["waves"].clear()
            plan = [("reference", wave, 0.0)]
            plan += [(f"soak-{i + 1}", wave, hanging_share) for i in range(max(1, jobs // wave))]
            for label, size, share in plan:
                run_wave(label, size, share)
        finally:
            stop.set()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            cluster.stop()
    results["rss_samples"] = samples
    phase_events = {(n, r): c for (n, r), c in recorder.events.items() if r in PHASES}
    entered = sum(len(phases) for phases in recorder.entered.values())
    unannounced = [f"{n}/{p}" for n, phases in recorder.entered.items() for p in phases if (n, p) not in phase_events]
    warned = {n: c for (n, r), c in recorder.events.items() if r == "StorageUnreachable"}
    results.update(
        phases_entered=entered,
        phase_events=sum(phase_events.values()),
        events_per_transition=sum(phase_events.values()) / max(1, entered),
        duplicate_events={f"{n}/{r}": c for (n, r), c in recorder.events.items() if c > 1},
        transitions_without_event=unannounced[:20],
        hanging_jobs_warned=len(warned),
        storage_unreachable_per_hanging_job=sum(warned.values()) / max(1, len(warned)),
    )
    return results


def report(results: dict[str, Any]) -> None:
    waves = results["waves"]
    ref, rest = waves[0], waves[1:]
    soak_lat = [w["latency_p50_s"] for w in rest]
    print(
        "\n== operator soak: waves of CPTJobs created, run to Succeeded and deleted; hanging S3 endpoints mixed in =="
    )
    print(
        f"jobs: {sum(w['jobs'] for w in rest)} in {len(rest)} waves (+ a reference wave of {ref['jobs']} healthy jobs)"
    )
    print("RSS over time (s -> MB): " + ", ".join(f"{w['at_s']:.0f}->{w['rss_mb']:.0f}" for w in waves))
    if results["rss_samples"]:
        peak = max(r for _, r in results["rss_samples"])
        print(
            f"RSS peak {peak:.0f} MB; end of reference wave {ref['rss_mb']:.0f} MB; end of last wave {waves[-1]['rss_mb']:.0f} MB "
            f"(growth over the soak {waves[-1]['rss_mb'] - rest[0]['rss_mb']:+.0f} MB after the first soak wave)"
        )
    print(
        f"create->RayJob, healthy jobs: reference p50 {ref['latency_p50_s']:.3f}s p95 {ref['latency_p95_s']:.3f}s; "
        f"with hanging endpoints p50 {statistics.median(soak_lat):.3f}s (median of waves), "
        f"p95 {max(w['latency_p95_s'] for w in rest):.3f}s (worst wave)"
    )
    print(
        f"phase events per phase transition: {results['events_per_transition']:.3f} "
        f"({results['phase_events']} events / {results['phases_entered']} phases entered); "
        f"duplicate events: {len(results['duplicate_events'])}; transitions without an event: "
        f"{len(results['transitions_without_event'])}"
    )
    print(
        f"StorageUnreachable warnings per hanging job: {results['storage_unreachable_per_hanging_job']:.2f} "
        f"({results['hanging_jobs_warned']} of {sum(w['hanging'] for w in waves)} hanging jobs warned)"
    )
