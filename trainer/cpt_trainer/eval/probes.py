"""Knowledge probes: answers scored by exact match and token F1.

Knowledge probes: question-answer pairs answered greedily by the model and scored by exact match
(normalised equality, as in SQuAD) and token F1 against the reference.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cpt_core.api.v1alpha1 import ProbeScores
from cpt_core.storage import Storage


@dataclass(frozen=True)
class Probe:
    question: str
    answer: str


def load_probes(storage: Storage, uri: str) -> list[Probe]:
    probes = []
    for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            probes.append(Probe(str(row["question"]), str(row["answer"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f'spec.evaluation.probes: {uri} line {number}: expected {{"question": ..., "answer": ...}} ({exc})'
            ) from None
    return probes


def _normalise(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1_score(prediction: str, reference: str) -> float:
    pred, ref = _normalise(prediction), _normalise(reference)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if not pred or not ref or not overlap:
        return float(pred == ref)
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """The normalised prediction equals the normalised reference (case, punctuation, articles and
    whitespace ignored), as in SQuAD's exact match."""
    return _normalise(prediction) == _normalise(reference)


def score_answers(probes: Sequence[Probe], answers: Sequence[str], available: int | None = None) -> ProbeScores:
    """Exact match and token F1 of `answers` (the first line of each generation) against the references."""
    firsts = [answer.split("\n")[0].strip() for answer in answers]
    ems = [exact_match(a, p.answer) for a, p in zip(firsts, probes, strict=True)]
    f1s = [f1_score(a, p.answer) for a, p in zip(firsts, probes, strict=True)]
    return ProbeScores(
        exact_match=float(np.mean(ems)) if ems else 0.0,
        f1=float(np.mean(f1s)) if f1s else 0.0,
        count=len(ems),
        available=available if available is not None else len(ems),
    )
