"""What a tenant who can write a job's storage plants there: files whose unpickling runs code, and
checkpoints rewritten so that they still verify (a new manifest, a new COMMITTED marker).

Whoever can write a checkpoint prefix can also rewrite its MANIFEST.json and COMMITTED: the checksums
guard against damage, not against an author. `rewrite_checkpoint` does what such a writer would.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from cpt_core.contract import layout
from cpt_core.storage import Location, Storage


class RunsCode:
    """Unpickled, it writes `marker` (any code could run there instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran while unpickling')",))


def code_running_pt(marker: Path, **beside: Any) -> bytes:
    """A torch.save file (zip format, as torch writes them) whose unpickling writes `marker`."""
    import torch

    buffer = io.BytesIO()
    torch.save({"payload": RunsCode(marker), **beside}, buffer)
    return buffer.getvalue()


def rewrite_checkpoint(
    storage: Storage, checkpoint: Location, files: dict[str, bytes], planted: dict[str, bytes] | None = None
) -> None:
    """Write `files` into a committed checkpoint and list them, with `planted` ones (already stored by other
    means, e.g. `VerbatimS3.plant`), in a new manifest that a new COMMITTED marker names: it verifies."""
    for name, data in files.items():
        storage.write_bytes(checkpoint.join(name), data)
    manifest = json.loads(storage.read_bytes(checkpoint.join(layout.MANIFEST)))
    for name, data in {**files, **(planted or {})}.items():
        manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    storage.write_bytes(checkpoint.join(layout.MANIFEST), raw)
    marker = json.loads(storage.read_bytes(checkpoint.join(layout.COMMITTED)))
    marker["manifestSha256"] = hashlib.sha256(raw).hexdigest()
    storage.write_text(checkpoint.join(layout.COMMITTED), json.dumps(marker))
