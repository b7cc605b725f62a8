"""One storage interface for the trainer and the operator: local paths and S3-compatible stores.

URIs are `s3://bucket/key`, `file:///abs/path` or plain paths. `Storage` lists, reads and
writes small objects atomically (readers never see half a file: local writes go to a temp
file that is renamed into place; an S3 PUT is atomic by nature), and moves whole
directories in parallel for checkpoints. A stored name becomes a local path only through `safe_join`
(keys.py): keys are written by whoever can write the storage, and `..`, `/x` or `a//b` must not
write outside the directory they are downloaded into.

S3 settings come from `spec.storage` plus the environment: credentials only from
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` (the operator injects them
from the referenced Secret) or boto3's default chain; they are never logged or repr'd.
Errors are translated into `StorageError`s that say what to fix.
"""

from cpt_core.storage.keys import UnsafeKey, safe_join
from cpt_core.storage.locations import (
    AccessDenied,
    Location,
    NotFound,
    ObjectInfo,
    S3Settings,
    StorageError,
    TooLarge,
    Unreachable,
    parse_uri,
)
from cpt_core.storage.store import Storage

__all__ = [
    "AccessDenied",
    "Location",
    "NotFound",
    "ObjectInfo",
    "S3Settings",
    "Storage",
    "StorageError",
    "TooLarge",
    "Unreachable",
    "UnsafeKey",
    "parse_uri",
    "safe_join",
]
