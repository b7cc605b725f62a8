"""Which documents a synthesis may use: the origin source's training documents, never its holdout.

The holdout is chosen by the data pipeline's own function (`prepare._select_holdout`) over the same
listing, the same document lines, the same seed and count, so the documents excluded here are
exactly the ones `prepare` holds out for evaluation. The documents are cut into units (consecutive
documents of one file): the grain of Ray Data tasks and of resuming.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cpt_core.api.v1alpha1 import CPTJobSpec, DataSource
from cpt_core.storage import ObjectInfo, Storage

from cpt_trainer.data.documents import Document, iter_documents
from cpt_trainer.data.prepare import _select_holdout
from cpt_trainer.data.tokenize import TokenizedFile
from cpt_trainer.synthesis.writers import SourceDocument

#: Documents per unit: small enough to resume cheaply and to spread over workers, large enough to batch.
UNIT_DOCUMENTS = 32


@dataclass(frozen=True)
class Unit:
    file: int
    chunk: int
    documents: tuple[SourceDocument, ...]

    @property
    def id(self) -> tuple[int, int]:
        return (self.file, self.chunk)

    @property
    def name(self) -> str:
        return f"unit-{self.file:05d}-{self.chunk:05d}.pairs"


@dataclass
class Selection:
    units: list[Unit]
    used: int
    excluded: int
    texts: dict[tuple[int, int], str]


def _read(origin: DataSource, files: list[ObjectInfo], storage: Storage) -> list[list[Document]]:
    return [[d for d in iter_documents(origin, obj, storage) if isinstance(d, Document)] for obj in files]


def select_documents(
    spec: CPTJobSpec, origin: DataSource, files: list[ObjectInfo], storage: Storage, split: str
) -> Selection:
    """The documents of `split` ("train" or "holdout") of `origin`, in units."""
    per_file = _read(origin, files, storage)
    stand_ins = [
        TokenizedFile(
            file_index=i,
            uri=obj.uri,
            tokens=np.zeros(0, dtype=np.int64),
            train_mask=np.zeros(0, dtype=np.uint8),
            offsets=np.zeros(len(docs) + 1, dtype=np.int64),
            lines=np.asarray([d.line for d in docs], dtype=np.int64),
        )
        for i, (obj, docs) in enumerate(zip(files, per_file, strict=True))
    ]
    masks = _select_holdout(stand_ins, spec.data.validation.holdout_documents, spec.training.seed, origin.name)
    units: list[Unit] = []
    texts: dict[tuple[int, int], str] = {}
    used = excluded = 0
    for i, (docs, held) in enumerate(zip(per_file, masks, strict=True)):
        chosen = [
            SourceDocument(i, d.line, d.text or "")
            for d, h in zip(docs, held.tolist(), strict=True)
            if bool(h) == (split == "holdout")
        ]
        used += len(chosen)
        excluded += len(docs) - len(chosen)
        for d in chosen:
            texts[(d.file, d.line)] = d.text
        for c, start in enumerate(range(0, len(chosen), UNIT_DOCUMENTS)):
            units.append(Unit(i, c, tuple(chosen[start : start + UNIT_DOCUMENTS])))
    return Selection(units, used, excluded, texts)
