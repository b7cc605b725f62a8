"""The objects the operator creates, built by pure functions: their `names` (within Kubernetes' rules), the
spec ConfigMap and the RayJob (`manifests`), and the pod `overrides` merged into the Ray pods.
"""
