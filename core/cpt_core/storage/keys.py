"""Stored names as local paths: the one check that a key (or a name a manifest lists) stays in its directory.

Object keys and the names in manifests are written by whoever can write the storage, and S3 keeps any
key verbatim: `model/../../x`, `model//x` and `/x` are three objects. Joined onto a local directory as
they are, they would write elsewhere (`root / "/x"` is `/x`). `safe_join` is how every download maps
a stored name to a local path; it refuses a name with a `..` or `.` segment, a leading `/`, an empty
segment (`a//b`: two keys would be one file) or a NUL, and a path that resolves outside the directory
(a symbolic link on the way), with `UnsafeKey` naming the key and the reason.
"""

from __future__ import annotations

from pathlib import Path

from cpt_core.storage.locations import StorageError


class UnsafeKey(StorageError):
    """A stored name that cannot be a local path inside the directory it is downloaded into; nothing was written."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def key_problem(relative: str) -> str | None:
    """Why `relative` (a name below a directory) cannot be a local path inside it, or None (pure)."""
    if not relative:
        return "its name below the directory is empty"
    if "\x00" in relative:
        return "its name has a NUL character"
    if relative.startswith("/"):
        return "its name starts with '/' (an absolute path, or an empty segment after the prefix)"
    segments = relative.split("/")
    if ".." in segments:
        return "its name has a '..' segment"
    if "." in segments:
        return "its name has a '.' segment"
    if "" in segments:
        return "its name has an empty segment ('//')" if relative.rstrip("/") else "its name is only slashes"
    return None


def safe_join(root: str | Path, relative: str, key: str | None = None) -> Path:
    """`root / relative`, resolved, when it stays inside `root`; otherwise `UnsafeKey`.

    `key` is what the message names (the object's URI, or the manifest entry); `relative` by default."""
    named = key or relative
    problem = key_problem(relative)
    base = Path(root).resolve()
    if problem is None:
        target = (base / relative).resolve()
        if target == base or not target.is_relative_to(base):
            problem = "it resolves outside the directory (a symbolic link on the way)"
        else:
            return target
    raise UnsafeKey(f"{named}: refused, not written below {base}: {problem}", key=named)
