"""Where storage lives: parsed URIs (`Location`), connection settings, listed objects, and the
errors every storage operation raises (each says what to fix)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cpt_core.contract import names

if TYPE_CHECKING:
    from cpt_core.api.v1alpha1 import StorageSpec


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and the likely fix."""


class TooLarge(StorageError):
    """An object is larger than its reader allows; it was not read."""


class NotFound(StorageError, FileNotFoundError):
    """The object or path does not exist."""


class AccessDenied(StorageError, PermissionError):
    """The credentials may not do this."""


class Unreachable(StorageError, ConnectionError):
    """The endpoint refused the connection or did not answer within the timeouts."""


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class Location:
    """A parsed URI: `s3` with bucket and key, or `file` with an absolute path in `key`."""

    scheme: Literal["s3", "file"]
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    def join(self, *parts: str) -> Location:
        """A child location; `join("a", "b/")` keeps the trailing slash of a prefix."""
        key = self.key
        for part in parts:
            if not part:
                continue
            key = (key.rstrip("/") + "/" + part.lstrip("/")) if key else part.lstrip("/")
        return Location(self.scheme, self.bucket, key)

    def as_prefix(self) -> Location:
        """The same location with a trailing slash (a "directory")."""
        return self if self.key.endswith("/") or not self.key else Location(self.scheme, self.bucket, self.key + "/")

    @property
    def path(self) -> Path:
        """The local path of a `file` location."""
        if self.scheme != "file":
            raise ValueError(f"{self} is not a local path")
        return Path(self.key)


def parse_uri(uri: str, base_dir: str | Path | None = None) -> Location:
    """Parse `s3://bucket/key`, `file:///path` or a plain path (relative to `base_dir` or the cwd)."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"{uri}: missing bucket name (s3://BUCKET/prefix)")
        return Location("s3", bucket, key)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise ValueError(f"{uri}: unsupported scheme; use s3://, file:// or a plain path")
    trailing = "/" if uri.endswith("/") else ""
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return Location("file", "", str(path.resolve()) + trailing)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class S3Settings:
    """Connection settings for S3-compatible storage. Secrets are excluded from repr."""

    endpoint: str | None = None
    region: str = "us-east-1"
    addressing_style: str = "path"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 8
    """Attempts per S3 call (botocore's standard retry mode: the first try plus retries)."""
    connect_timeout: float = 10.0
    """Seconds to establish a connection."""
    read_timeout: float = 60.0
    """Seconds to wait for a response once connected (the operator uses far less than the trainer)."""
    anonymous: bool = False
    """Send unsigned requests and never look for credentials (botocore's chain would find the process's own:
    environment, web identity, instance metadata). The operator's clients for jobs without a readable Secret."""
    hard_deadlines: bool = False
    """Register every request's socket with the calling thread's `deadline.Guard`, so a deadline can end it."""

    @classmethod
    def from_spec(cls, spec: StorageSpec | None, env: Mapping[str, str] | None = None) -> S3Settings:
        """Settings from `spec.storage`, with credentials (and a fallback endpoint) from `env`."""
        env = os.environ if env is None else env
        endpoint = (
            (spec.endpoint if spec else None)
            or env.get(names.AWS_ENDPOINT_ENV + "_S3")
            or env.get(names.AWS_ENDPOINT_ENV)
        )
        return cls(
            endpoint=endpoint or None,
            region=(spec.region if spec else None) or env.get(names.AWS_REGION_ENV) or "us-east-1",
            addressing_style=spec.addressing_style if spec else "path",
            access_key_id=env.get(names.ACCESS_KEY_ID) or None,
            secret_access_key=env.get(names.SECRET_ACCESS_KEY) or None,
            session_token=env.get(names.SESSION_TOKEN) or None,
        )


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its location, size and a change token (ETag or mtime)."""

    location: Location
    size: int
    etag: str

    @property
    def uri(self) -> str:
        return str(self.location)
