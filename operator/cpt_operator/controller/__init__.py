"""The control plane: a kopf operator that turns CPTJobs into KubeRay RayJobs.

Pure rooms (unit-tested without a cluster): `lifecycle` (the state machine and its vocabulary) and
`build` (the ConfigMap and RayJob). I/O rooms: `preflight` (storage, Secrets, Hub models) and `io` (the
Kubernetes client, S3 clients behind a bounded gate, failure evidence). Beside them: `reconciler` (one
reconciliation per job: observe, decide, act, write the status, post events), `handlers` (the kopf
triggers, thin), `settings`, `metrics` and `app` (`cpt operator`). Nothing here imports torch or Ray.
"""
