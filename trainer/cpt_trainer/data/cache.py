"""The cache entry of a prepared source: what is recorded when it is written, what is checked
before it is used.

An entry is `<cacheUri>/<key>/`: shard files and `manifest.json`, written last. The manifest lists
every shard with its size and SHA-256 (and, on S3, the ETag the server gave it). A "cache hit"
is only declared after the listing matches: every listed file present with its recorded size,
no shard missing, and the content matching -- SHA-256 of the files for a local entry, the
server's ETag for an S3 entry (no download). An entry that fails is rebuilt with a warning that
names the file and the problem; it is never read as good.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cpt_core.storage import Location, NotFound, Storage
from cpt_core.storage.digest import sha256_file

from cpt_trainer.data.manifest import FileDigest, Manifest
from cpt_trainer.data.shards import ShardLayout, shard_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def digest_files(local: Path) -> dict[str, FileDigest]:
    """Size and SHA-256 of every file in a freshly written entry directory (before upload)."""
    return {
        p.name: FileDigest(size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(local.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def record_etags(storage: Storage, base: Location, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
    """After uploading to S3: the ETag the server computed for each file, kept for verification."""
    etags = {o.location.key[len(base.key) :]: o.etag for o in storage.list_objects(base)}
    return {name: digest.model_copy(update={"etag": etags.get(name)}) for name, digest in files.items()}


def expected_shards(manifest: Manifest) -> dict[str, int]:
    """The shard files the manifest's splits imply, with their sizes."""
    layout = ShardLayout(manifest.sequence_length, manifest.dtype, manifest.rows_per_shard)
    out: dict[str, int] = {}
    for kind, split in (("train", manifest.train), ("holdout", manifest.holdout)):
        for index in range(split.shards):
            rows = min(layout.rows_per_shard, split.rows - index * layout.rows_per_shard)
            out[shard_name(kind, index)] = rows * layout.record_bytes
    return out


def verify_entry(storage: Storage, base: Location, manifest: Manifest) -> str | None:
    """None when the entry is intact; otherwise what is wrong, naming the file."""
    if manifest.checksums is None:
        return "written without checksums by an older version"
    expected = expected_shards(manifest)
    for name, size in expected.items():
        recorded = manifest.checksums.get(name)
        if recorded is None:
            return f"the manifest does not list {name}"
        if recorded.size != size:
            return f"the manifest records {recorded.size} bytes for {name}, its splits imply {size}"
    present = {o.location.key[len(base.key) :]: o for o in storage.list_objects(base)}
    for name, recorded in manifest.checksums.items():
        found = present.get(name)
        if found is None:
            return f"{base.join(name)} is missing"
        if found.size != recorded.size:
            return f"{base.join(name)} is {found.size} bytes, the manifest records {recorded.size}"
        if base.is_s3:
            if recorded.etag and found.etag != recorded.etag:
                return f"{base.join(name)} was replaced (ETag {found.etag}, the manifest records {recorded.etag})"
        elif sha256_file(found.location.path) != recorded.sha256:
            return f"{base.join(name)} does not match its SHA-256 in the manifest"
    return None


def cached_manifest(storage: Storage, base: Location, key: str) -> tuple[Manifest | None, str | None]:
    """(the manifest of an intact cache entry, None) or (None, why it cannot be used; None when absent)."""
    location = base.join(MANIFEST)
    try:
        manifest = Manifest.model_validate_json(storage.read_text(location))
    except NotFound:
        return None, None
    except ValueError as exc:
        return None, f"{location} does not parse ({str(exc).splitlines()[0]})"
    if manifest.key != key:
        return None, f"{location} names key {manifest.key}, not {key}"
    problem = verify_entry(storage, base, manifest)
    if problem is not None:
        return None, problem
    return manifest, None
