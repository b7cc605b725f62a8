"""Shared building blocks of the API models: the base model (camelCase wire names, unknown fields
rejected, docstrings kept), field-anchored errors and the common string types."""

from __future__ import annotations

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
