"""`spec.storage`: the S3-compatible object store of `s3://` URIs; credentials are only ever referenced."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import StringConstraints, field_validator

from cpt_core.api.v1alpha1.base import (
    STORAGE_SECRET,
    DNSLabel,
    _Model,
    embedded_credentials,
    has_userinfo,
)


class StorageSpec(_Model):
    """S3-compatible object storage used by `s3://` URIs. Credentials are only ever referenced."""

    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    """Endpoint URL of an S3-compatible server, e.g. `http://minio.minio:9000`. Unset: AWS S3."""
    region: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "us-east-1"
    """Region name sent with requests."""
    credentials_secret: DNSLabel | None = None
    """Name of a Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    (optionally AWS_SESSION_TOKEN). Unset: the pods' ambient credentials (IRSA, instance role).
    `cpt run` reads the same keys from the environment."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """S3 addressing style; most self-hosted servers need `path`."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if has_userinfo(value):
            raise ValueError(embedded_credentials("the endpoint URL", STORAGE_SECRET))
        if not re.match(r"^https?://[^/\s]+(/.*)?$", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://minio.minio:9000")
        return value
