"""The operator's I/O, each call bounded: Kubernetes, S3, failure evidence.

The Kubernetes API client (`kube`), the S3 clients (`clients`) and the
`gate` every S3 call goes through (bulkhead and breaker per endpoint), and the failure `evidence` copied
when an attempt ends.
"""
