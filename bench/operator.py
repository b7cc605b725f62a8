"""Operator benchmark against KMock's Kubernetes emulator (made faithful) and SeaweedFS S3.

Both operators run as separate processes that log in with a kubeconfig pointing at the emulator:

- **ours**: `cpt operator` (validation, storage preflight against S3, ConfigMap + RayJob, status);
- **baseline**: a bare kopf operator whose create handler only posts the same RayJob -- the floor
  that kopf plus the API round trips impose.

Figures: create -> RayJob-created latency p50/p95 (20 jobs created one at a time), the time for
200 CPTJobs created at once to each get their RayJob, and the operator's RSS after the burst.
Targets: p50 <= 0.5 s, 200 jobs <= 60 s, RSS <= 200 MB.

    python bench/operator.py [--jobs 200]
    python bench/operator.py --soak [--soak-jobs 1000 --wave 100 --hanging-share 0.1]   (bench/operator_soak.py)

Writes bench/results/operator.json (operator-soak.json for the soak).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml

BARE_OPERATOR = """
import kopf, aiohttp, os
from cpt_core.validation.validate import parse_job
from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.settings import OperatorSettings

@kopf.on.startup()
def configure(settings, **_):
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="bare.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="bare.dev")
    settings.posting.level = 40

@kopf.on.create("cpt.dev", "v1alpha1", "cptjobs")
async def create(body, **_):
    job = parse_job(dict(body))
    job.metadata.namespace = body["metadata"]["namespace"]
    rayjob = build_rayjob(job, 1, OperatorSettings())
    server = os.environ["BENCH_SERVER"]
    async with aiohttp.ClientSession() as session:
        url = f"{server}/apis/ray.io/v1/namespaces/{job.metadata.namespace}/rayjobs"
        async with session.post(url, json=rayjob) as response:
            response.raise_for_status()
"""


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "bench", "user": {}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "bench"}}],
            }
        )
    )
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(mode: str, cluster: Any, s3: Any, work: Path, jobs: int) -> dict[str, Any]:
    from devkit.k8s_emulator import CPTJOBS, RAYJOBS
    from devkit.cluster import cluster_job, create_secret, wait_for

    namespace = f"bench-{mode}"
    create_secret(cluster, s3, namespace=namespace)
    created: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def listener(key: Any, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        if key == RAYJOBS and kind == "ADDED" and meta.get("namespace") == namespace:
            with lock:
                seen.setdefault(meta["labels"]["cpt.dev/job"], time.perf_counter())

    cluster.emulator.listeners.append(listener)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig(work / f"kubeconfig-{mode}", cluster.url)),
        "BENCH_SERVER": cluster.url,
    }
    if mode == "ours":
        cmd = [
            sys.executable,
            "-m",
            "cpt_core.cli",
            "operator",
            "-n",
            namespace,
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            "--poll-seconds",
            "10",
        ]
    else:
        script = work / "bare_operator.py"
        script.write_text(BARE_OPERATOR)
        cmd = [sys.executable, "-m", "kopf", "run", "--standalone", "-n", namespace, "--quiet", str(script)]
    log = (work / f"{mode}.log").open("wb")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        time.sleep(3)  # start-up, login, first list/watch
        if process.poll() is not None:
            raise RuntimeError(f"{mode} operator exited: {(work / f'{mode}.log').read_text()[-2000:]}")

        def create(name: str) -> None:
            created[name] = time.perf_counter()
            cluster.create(CPTJOBS, cluster_job(s3, name, namespace=namespace))

        # Latency: one job at a time.
        latencies = []
        for i in range(20):
            name = f"lat-{i:03d}"
            create(name)
            wait_for(lambda n=name: n in seen, timeout=60, interval=0.01, what=f"RayJob of {name}")
            latencies.append(seen[name] - created[name])
        # Throughput: a burst.
        burst = [f"burst-{i:04d}" for i in range(jobs)]
        started = time.perf_counter()
        for name in burst:
            create(name)
        wait_for(lambda: all(n in seen for n in burst), timeout=600, interval=0.1, what="RayJobs of the burst")
        total = max(seen[n] for n in burst) - started
        rss = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        cluster.emulator.listeners.remove(listener)
    latencies.sort()
    return {
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        f"burst_{jobs}_jobs_s": total,
        "rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--soak", action="store_true", help="run the soak instead (bench/operator_soak.py)")
    parser.add_argument("--soak-jobs", type=int, default=1000, help="soak: jobs over all waves")
    parser.add_argument("--wave", type=int, default=100, help="soak: jobs created (and deleted) at once")
    parser.add_argument("--hanging-share", type=float, default=0.1, help="soak: share of jobs on a hanging endpoint")
    args = parser.parse_args()
    if args.soak:
        from operator_soak import report, soak

        with tempfile.TemporaryDirectory(prefix="cpt-bench-soak-") as tmp:
            results = soak(args.soak_jobs, args.wave, args.hanging_share, Path(tmp))
        report(results)
        out = ROOT / "bench" / "results" / "operator-soak.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
        return
    from devkit.cluster import start_cluster, upload_example_data
    from devkit.seaweed import SeaweedS3

    with tempfile.TemporaryDirectory(prefix="cpt-bench-operator-") as tmp:
        work = Path(tmp)
        with SeaweedS3(work / "s3") as s3:
            upload_example_data(s3)
            cluster = start_cluster()
            try:
                results = {mode: measure(mode, cluster, s3, work, args.jobs) for mode in ("baseline", "ours")}
            finally:
                cluster.stop()
    ours, base = results["ours"], results["baseline"]
    burst = f"burst_{args.jobs}_jobs_s"
    print("\n== operator: CPTJob created -> RayJob created (emulator + SeaweedFS, operators as processes) ==")
    print(f"{'':10s} {'p50':>8s} {'p95':>8s} {f'{args.jobs} jobs':>10s} {'RSS':>8s}")
    for mode in ("baseline", "ours"):
        r = results[mode]
        print(f"{mode:10s} {r['latency_p50_s']:7.3f}s {r['latency_p95_s']:7.3f}s {r[burst]:9.1f}s {r['rss_mb']:6.0f}MB")
    print(
        f"ratio ours/baseline: p50 {ours['latency_p50_s'] / base['latency_p50_s']:.2f}x, burst {ours[burst] / base[burst]:.2f}x "
        f"(ours adds validation, an S3 preflight, a ConfigMap and status writes per job)"
    )
    print(
        f"targets: p50 <= 0.5 s ({'met' if ours['latency_p50_s'] <= 0.5 else 'MISSED'}), {args.jobs} jobs <= 60 s "
        f"({'met' if ours[burst] <= 60 else 'MISSED'}), RSS <= 200 MB ({'met' if ours['rss_mb'] <= 200 else 'MISSED'})"
    )
    out = ROOT / "bench" / "results" / "operator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
