"""Preflight: storage, Secrets and Hub models checked before any GPU is requested.

`storage` (the credentials Secret, buckets, data, a write
probe) and `hub` (each hf:// model exists and the token can read it), with one shape for a missing
`secrets` key.
"""
