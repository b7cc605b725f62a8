"""The operator's I/O, bounded: the Kubernetes API client (`kube`), the S3 clients (`clients`) and the
`gate` every S3 call goes through (bulkhead and breaker per endpoint), and the failure `evidence` copied
when an attempt ends.
"""
