"""cpt_operator: the control plane. A kopf operator that turns CPTJobs into KubeRay RayJobs.

It imports the shared contract from `cpt_core` and never the trainer (`cpt_trainer`).
`controller` holds the control plane (pure lifecycle and builders, preflight, bounded I/O, the
reconciler and its kopf handlers); `cli` the operator's `cpt` commands (operator, render, status,
logs, suspend, resume; also the `kubectl cpt` plugin).
"""

from cpt_core import __version__

__all__ = ["__version__"]
