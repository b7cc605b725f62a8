"""cpt_operator: the control plane. A kopf operator that turns CPTJobs into KubeRay RayJobs.

It imports the shared contract from `cpt_core` and never the trainer (`cpt_trainer`).
`cpt_operator.controller` holds the handlers, the pure state machine and builders, preflight
and metrics; `cpt_operator.cli` the `cpt operator` and `cpt render` commands.
"""

from cpt_core import __version__

__all__ = ["__version__"]
