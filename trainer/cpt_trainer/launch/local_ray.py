"""An embedded, loopback-only Ray for `cpt run`, `cpt prepare --ray` and the tests.

Ray would otherwise bind to a non-loopback address, write under ~/.ray and /tmp/ray, and leave
`ray::` processes behind when the driver dies; this context manager avoids all three and
always shuts Ray down, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from cpt_core.contract import names

#: Environment that keeps Ray local and quiet; also passed to every Ray worker process.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    "TOKENIZERS_PARALLELISM": "false",
    names.HF_OFFLINE_ENV: os.environ.get(names.HF_OFFLINE_ENV, "1"),
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
}
#: Only the embedded, loopback-only Ray of this machine runs without authentication (unless the environment
#: already says otherwise). Never passed to workers: on a cluster they inherit KubeRay's token auth from the
#: raylet, and a `disabled` there would cut them off from the GCS.
LOCAL_ONLY_ENV = {names.RAY_AUTH_MODE_ENV: "disabled"}


def worker_env() -> dict[str, str]:
    """Environment for Ray workers: ours plus storage credentials and caches from the driver."""
    env = dict(RAY_ENV)
    for key in (
        *(key for key, _ in names.CREDENTIAL_KEYS),
        names.AWS_ENDPOINT_ENV,
        names.AWS_REGION_ENV,
        "TORCH_EXTENSIONS_DIR",
        "HF_HOME",
        "PYTHONPATH",
    ):
        if os.environ.get(key):
            env[key] = os.environ[key]
    # Our own settings travel too (CPT_CACHE_DIR, CPT_DEBUG, CPT_TRAINER_HOOKS and what hooks read).
    env.update({k: v for k, v in os.environ.items() if k.startswith(names.ENV_PREFIX) and v})
    # Never Ray's authentication: a worker takes its raylet's (KubeRay's token on a cluster, LOCAL_ONLY_ENV here).
    return {k: v for k, v in env.items() if not k.startswith(names.RAY_AUTH_ENV_PREFIX)}


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, include_dashboard: bool = True, **kwargs: Any) -> Iterator[None]:
    """Start a local Ray on 127.0.0.1 in a private temp dir; shut it down on exit."""
    for key, value in {**RAY_ENV, **LOCAL_ONLY_ENV}.items():
        os.environ.setdefault(key, value)
    import ray

    # Unix socket paths are limited to ~107 bytes: keep the temp dir short.
    temp_dir = tempfile.mkdtemp(prefix="cpt-ray-", dir="/tmp")
    try:
        ray.init(
            num_cpus=num_cpus,
            # Ray Train polls the State API, which the dashboard serves; without it the log fills
            # with "State API may be temporarily unavailable".
            include_dashboard=include_dashboard,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            configure_logging=True,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env={"env_vars": worker_env()},
            **kwargs,
        )
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
