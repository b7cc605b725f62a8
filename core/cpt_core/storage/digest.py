"""Checksums of stored files, as manifests record them.

Checksums of stored files: what manifests record (checkpoints, cache entries, synthesis outputs) and what
a reader checks before it trusts a file it did not just write.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    # hashlib.file_digest needs Python 3.11; this is the same loop.
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_dir(local: Path) -> dict[str, dict[str, Any]]:
    """{relative name: {size, sha256}} of every file below `local`."""
    return {
        path.relative_to(local).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }
