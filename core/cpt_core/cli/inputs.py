"""How `cpt` commands read manifests, the way kubectl does.

Files, `-` (stdin), directories (every `*.yaml`, `*.yml` and `*.json` in them, in name order) and
multi-document files whose non-CPTJob documents (the Secret or ConfigMap shipped beside a job) are
skipped with a note.

`cpt_core.cli.common.load_local_job` (one job: run, prepare, synthesize) and `cpt validate` / `cpt render`
(every job) read through here, so each command accepts the same inputs and names a document the
same way in its messages: `FILE` for a single-document file, `FILE#N` for the N-th document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cpt_core.contract import names
from cpt_core.validation.validate import UnreadableFile, parse_documents

#: What a directory contributes: the manifests kubectl would read from it (not recursive).
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


@dataclass(frozen=True)
class Document:
    """One YAML document of an input, with the name messages use for it."""

    where: str  # "FILE" or "FILE#N"; "<stdin>" for `-`
    doc: Any
    base_dir: Path  # relative paths in a local job resolve against this


def expand(args: Iterable[str | Path]) -> list[str]:
    """Files, `-` and directories -> the inputs to read, in order. A directory without
    manifests is an UnreadableFile (a usage error: the user named the wrong directory)."""
    out: list[str] = []
    for arg in map(str, args):
        path = Path(arg)
        if arg != STDIN and path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
            if not found:
                raise UnreadableFile(f"{arg}: no *.yaml, *.yml or *.json files in this directory")
            out += [str(p) for p in found]
        else:
            out.append(arg)
    if out.count(STDIN) > 1:
        raise UnreadableFile("-: standard input can be read only once; name it once")
    return out


def read(arg: str, stdin: Any = None) -> tuple[str, str, Path]:
    """(label, text, base directory) of a file or of `-` (stdin)."""
    if arg == STDIN:
        stream = stdin if stdin is not None else sys.stdin
        return "<stdin>", stream.read(), Path.cwd()
    path = Path(arg)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise UnreadableFile(f"{arg}: is a directory; name the manifests in it, or the directory alone") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnreadableFile(f"{arg}: cannot read file: {reason}") from None
    return arg, text, path.resolve().parent


def parse(label: str, text: str, base_dir: Path) -> list[Document]:
    """Every non-empty document of `text`. Raises InvalidJob for a YAML syntax error or an empty input."""
    docs = parse_documents(label, text)
    # A kubectl-style List (`kubectl get -o yaml`, `cpt render -o json`) holds its documents in items.
    flat: list[Any] = []
    for doc in docs:
        is_list = isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list)
        flat += doc["items"] if is_list else [doc]
    many = len(flat) > 1
    return [Document(f"{label}#{i}" if many else label, d, base_dir) for i, d in enumerate(flat, start=1)]


def is_other_object(doc: Any) -> bool:
    """A Kubernetes object that is not a CPTJob (a Secret, a ConfigMap, ...): skipped, not an error.
    A document without apiVersion/kind, or a CPTJob of another API version, is still validated
    (and rejected with a message that says what is wrong)."""
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("kind"), str)
        and isinstance(doc.get("apiVersion"), str)
        and doc["kind"] != names.KIND
    )


def skipped_note(document: Document) -> str:
    name = (document.doc.get("metadata") or {}).get("name") if isinstance(document.doc.get("metadata"), dict) else None
    what = f"{document.doc['kind']} '{name}'" if name else str(document.doc["kind"])
    return f"{document.where}: skipped {what} ({document.doc['apiVersion']}): not a CPTJob"


def job_documents(document_lists: Iterable[list[Document]], note: Callable[[str], None]) -> list[Document]:
    """The documents to treat as CPTJobs; every other Kubernetes object is noted and skipped."""
    out: list[Document] = []
    for documents in document_lists:
        for document in documents:
            if is_other_object(document.doc):
                note(skipped_note(document))
            else:
                out.append(document)
    return out


def dump(data: Any, output: str) -> str:
    """`-o json` / `-o yaml` of a result: what tests and scripts parse."""
    if output == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
