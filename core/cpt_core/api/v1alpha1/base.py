"""The base models, field errors, string types and URI rules every section uses.

Shared building blocks of the API models: the base models (camelCase wire names, docstrings kept;
unknown fields rejected in the spec, ignored in the status sections the trainer writes), field-anchored
errors, the common string types and the URI rules.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

DNSLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
#: A Kubernetes resource quantity such as "4", "500m", "16Gi".
Quantity = Annotated[
    str,
    StringConstraints(
        max_length=64,
        pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$",
    ),
]
URI = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class FieldError(ValueError):
    """A validator error that belongs to a sub-path (`loc`) of the object being validated."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class _Model(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears on the wire (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class _Wire(BaseModel):
    """Base of what the trainer writes (the status sections, the progress file): camelCase, docstrings kept,
    unknown fields ignored, so a newer trainer's file stays readable by an older reader."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears on the wire (camelCase, unset optionals omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


#: URI schemes of models (a hub id, object storage, a local path, a file inside a Python package) and of data.
MODEL_SCHEMES = ("hf", "s3", "file", "pkg")
DATA_SCHEMES = ("s3", "file")


#: A URI with userinfo before its host (`scheme://user:password@host/...`, `https://TOKEN@host`): credentials
#: that would be stored in the object for anyone who may read it, and sent wherever the URI points. The
#: models and the CRD's CEL rules refuse it in every URI field with this one expression (short, so that it
#: stays within the API server's CEL cost budget on up to 64 x 64 data URIs).
USERINFO = r"^[^/]*://[^/]*@"
#: The Secret that holds storage credentials, named by every message that refuses them inline.
STORAGE_SECRET = "spec.storage.credentialsSecret"


def has_userinfo(uri: str) -> bool:
    """Whether `uri` carries credentials before its host (`s3://key:secret@bucket/`, `https://user@host`)."""
    return re.match(USERINFO, uri) is not None


def embedded_credentials(where: str, secret: str) -> str:
    """The one line that refuses credentials embedded in `where`, naming the Secret field that takes them."""
    return f"credentials must not be embedded in {where}; put them in a Kubernetes Secret and set {secret}"


def uri_credentials(schemes: tuple[str, ...]) -> str:
    """The refusal of a URI field that takes `schemes` (the Secret of the hub's token too where hf:// is one)."""
    secret = f"{STORAGE_SECRET} (s3://) or spec.model.tokenSecret (hf://)" if "hf" in schemes else STORAGE_SECRET
    return embedded_credentials("a URI", secret)


def redact_userinfo(text: str) -> str:
    """`text` with the userinfo of every URI in it replaced by `***`, for a message that shows a value."""
    return re.sub(r"(://)[^/\s]*@", r"\1***@", text)


def uri_scheme(uri: str) -> str:
    """`s3` of `s3://bucket/key`; empty for a plain path."""
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", uri)
    return match.group(1) if match else ""


def check_uri(uri: str, allowed: tuple[str, ...]) -> str:
    """`uri` when it carries no credentials, its scheme is allowed and its bucket name is valid (a validator's
    check; credentials first, so that no other message shows them)."""
    if has_userinfo(uri):
        raise ValueError(uri_credentials(allowed))
    scheme = uri_scheme(uri)
    if scheme and scheme not in allowed:
        raise ValueError(
            f"unsupported URI scheme '{scheme}://' (use one of "
            + ", ".join(f"{s}://" for s in allowed)
            + " or a plain local path)"
        )
    if scheme == "s3":
        rest = uri[len("s3://") :]
        bucket = rest.split("/", 1)[0]
        if ":" in bucket:
            raise ValueError(embedded_credentials("a URI", STORAGE_SECRET))
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ValueError(f"'{bucket}' is not a valid S3 bucket name (s3://BUCKET/prefix)")
    return uri
