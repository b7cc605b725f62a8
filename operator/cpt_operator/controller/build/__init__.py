"""The objects the operator creates (ConfigMap, RayJob), built by pure functions.

Their `names` (within Kubernetes' rules), the
spec ConfigMap and the RayJob (`manifests`), and the pod `overrides` merged into the Ray pods.
"""
