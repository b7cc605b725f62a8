"""The control plane: a kopf operator that turns CPTJobs into KubeRay RayJobs.

Pure parts (unit-tested without a cluster): `names`, `builders` (ConfigMap and RayJob
manifests), `state` (the lifecycle state machine), `preflight` (decisions). I/O parts:
`kube` (a small async API client), `handlers` (kopf handlers that observe, call `state.reconcile`
and apply its actions), `metrics`, `app` (`cpt operator`). Nothing here imports torch or Ray.
"""
