"""The trainer on a Ray cluster with token authentication, as KubeRay sets it up (RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN in every Ray pod): the workers it starts with `worker_env()` keep the cluster's token auth --
a RAY_AUTH_MODE=disabled among them would cut them off from the GCS -- and a driver without the token is
refused, so the auth is really on. Only the embedded Ray of `cpt run` turns it off, and only when nothing
says otherwise.

Each case runs in a fresh process, as a Ray pod does: Ray reads its auth mode once per process.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# local_ray() hands worker_env() to every worker, as `cpt train` does on the RayJob's cluster.
PROBE = """
import json, os, subprocess, sys
import ray
from cpt_trainer.launch.local_ray import local_ray

TOKEN = sys.argv[1]


@ray.remote
def auth_seen():
    return os.environ.get("RAY_AUTH_MODE"), bool(TOKEN) and os.environ.get("RAY_AUTH_TOKEN") == TOKEN

with local_ray(num_cpus=1, include_dashboard=False):
    out = {"driver": os.environ.get("RAY_AUTH_MODE"), "worker": ray.get(auth_seen.remote(), timeout=90)}
    if out["driver"] == "token":  # another driver, without the token
        stranger = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
        code = "import ray, sys; ray.init(address=sys.argv[1]); print('connected')"
        address = ray.get_runtime_context().gcs_address
        refused = subprocess.run(
            [sys.executable, "-c", code, address], env=stranger, capture_output=True, text=True, timeout=120
        )
        out["stranger"] = [refused.returncode, refused.stdout, refused.stderr[-3000:]]
print("PROBE " + json.dumps(out))
"""


def probe(**env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, env.get("RAY_AUTH_TOKEN", "")],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, result.stdout[-2000:] + result.stderr[-4000:]
    return dict(json.loads(line[len("PROBE ") :]))


def test_workers_keep_the_clusters_token_auth() -> None:
    token = secrets.token_urlsafe(32)
    seen = probe(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)  # what KubeRay gives a Ray pod
    assert seen["driver"] == "token"  # the pod's setting wins over the local default
    assert seen["worker"] == ["token", True]
    code, stdout, stderr = seen["stranger"]
    assert code != 0 and "connected" not in stdout
    assert "AuthenticationError" in stderr, stderr


def test_only_the_embedded_ray_runs_without_auth() -> None:
    seen = probe()
    assert seen["driver"] == "disabled"
    assert seen["worker"] == ["disabled", False]  # inherited from the local raylet, not from worker_env
