"""Extract the Kubernetes pod shapes that `spec.cluster.podOverrides` accepts from KubeRay's v1.7.0
RayJob CRD into `core/cpt_core/api/v1alpha1/k8s_pod_schema.json` (run by `make crd`; a test fails on drift).

The shapes are Kubernetes' own (core/v1 EnvVar, Volume, Affinity, ...), as KubeRay's CRD embeds them
in its pod template: the CPTJob CRD reuses them verbatim instead of re-typing them in pydantic, and
the API server, `cpt validate` and the operator all check overrides against the same schema that
KubeRay applies to the RayJob the operator builds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devkit.cluster import rayjob_schema  # noqa: E402

TARGET = ROOT / "core" / "cpt_core" / "api" / "v1alpha1" / "k8s_pod_schema.json"


def extract() -> dict[str, Any]:
    head = rayjob_schema()["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]["headGroupSpec"]
    pod = head["properties"]["template"]["properties"]["spec"]["properties"]
    container = pod["containers"]["items"]["properties"]
    return {
        "source": "KubeRay v1.7.0 ray.io_rayjobs.yaml, spec.rayClusterSpec.headGroupSpec.template (core/v1 shapes)",
        "definitions": {
            "Affinity": pod["affinity"],
            "EnvFromSource": container["envFrom"]["items"],
            "EnvVar": container["env"]["items"],
            "LocalObjectReference": pod["imagePullSecrets"]["items"],
            "PodSecurityContext": pod["securityContext"],
            "Quantity": container["resources"]["properties"]["limits"]["additionalProperties"],
            "SecurityContext": container["securityContext"],
            "Toleration": pod["tolerations"]["items"],
            "TopologySpreadConstraint": pod["topologySpreadConstraints"]["items"],
            "Volume": pod["volumes"]["items"],
            "VolumeMount": container["volumeMounts"]["items"],
        },
    }


def render() -> str:
    return json.dumps(extract(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
