"""Quality gates on generated question-answer pairs (pure functions, no I/O).

In order: format (parsed, a question, no answer given away), length (words of question and
answer), grounding (the answer is supported by its document), exact and near duplicates, and
question-type balance. Every rejection is kept with its reason, so the manifest counts each gate
and the report shows examples of what was dropped and why.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from cpt_core.api.v1alpha1 import SynthesisFilters

#: Gate names, in the order they run (the manifest's and the report's vocabulary).
GATES = ("format", "length", "grounding", "duplicate", "near-duplicate", "type-balance")

_WORD = re.compile(r"\w+", re.UNICODE)
# Function words carry no fact: grounding looks at the answer's content words only.
_STOP_WORDS = (
    "a an the of in on at to for by with from and or but is are was were be been being it its this that these "
    "those as into than then there their they he she his her we you your i not no so such which who whom what "
    "when where why how do does did has have had may must can could should would will shall"
)
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True)
class Candidate:
    """One generated pair and where it came from (`file`: index in the listing, `line`: the document's)."""

    type: str
    question: str
    answer: str
    file: int = 0
    line: int = 0
    problem: str | None = None  # set by the writer when its output could not be parsed


@dataclass
class Outcome:
    """Kept pairs (in input order) and rejected ones by gate."""

    kept: list[Candidate] = field(default_factory=list)
    rejected: dict[str, list[Candidate]] = field(default_factory=lambda: {g: [] for g in GATES})

    def counts(self) -> dict[str, int]:
        return {gate: len(pairs) for gate, pairs in self.rejected.items()}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def grounding(answer: str, document: str) -> float:
    """1.0 when the answer appears (normalised) in the document, else the share of its content words
    that the document contains."""
    answer_words, document_words = words(answer), words(document)
    if not answer_words:
        return 0.0
    if f" {' '.join(answer_words)} " in f" {' '.join(document_words)} ":
        return 1.0
    content = [w for w in answer_words if w not in _STOP] or answer_words
    vocabulary = set(document_words)
    return sum(w in vocabulary for w in content) / len(content)


def format_problem(pair: Candidate) -> str | None:
    """Why a pair is malformed, or None."""
    if pair.problem:
        return pair.problem
    question, answer = words(pair.question), words(pair.answer)
    if not question or not answer:
        return "empty question or answer"
    if "?" not in pair.question:
        return "the question is not a question (no '?')"
    if re.search(r"\b(question|answer)\s*:", pair.answer, re.IGNORECASE):
        return "the answer contains another Question:/Answer: block"
    if f" {' '.join(answer)} " in f" {' '.join(question)} ":
        return "the question gives the answer away"
    return None


def _shingles(pair: Candidate) -> set[str]:
    tokens = [*words(pair.question), "\0", *words(pair.answer)]
    return {f"{a} {b}" for a, b in itertools.pairwise(tokens)} or set(tokens)


def near_duplicates(pairs: Sequence[Candidate], threshold: float) -> list[int | None]:
    """For each pair, the index of an earlier non-duplicate pair with Jaccard(bigrams) >= threshold, or None.

    Written by hand rather than with datasketch's MinHash-LSH: that is approximate and pulls scipy into
    the trainer image, while QA sets are small enough for the exact answer. Prefix filtering (Bayardo et
    al., "Scaling up all pairs similarity search", 2007) keeps it fast: order every set's shingles by
    global rarity; two sets with Jaccard >= t must share one of the first |x| - ceil(t |x|) + 1 shingles
    of each, so only those are indexed and probed.
    """
    sets = [_shingles(p) for p in pairs]
    frequency = Counter(s for shingles in sets for s in shingles)
    index: dict[str, list[int]] = defaultdict(list)
    out: list[int | None] = []
    for i, shingles in enumerate(sets):
        ordered = sorted(shingles, key=lambda s: (frequency[s], s))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        match = None
        seen: set[int] = set()
        for shingle in prefix:
            for j in index.get(shingle, ()):
                if j in seen:
                    continue
                seen.add(j)
                union = len(shingles | sets[j])
                if union and len(shingles & sets[j]) / union >= threshold:
                    match = j
                    break
            if match is not None:
                break
        out.append(match)
        if match is None:
            for shingle in prefix:
                index[shingle].append(i)
    return out


def _spread(count: int, keep: int) -> list[bool]:
    """Which of `count` items to keep so that `keep` survive, evenly spread (not just the first ones)."""
    return [(i + 1) * keep // count > i * keep // count for i in range(count)]


def balance_targets(counts: dict[str, int], max_share: float) -> dict[str, int]:
    """Per type, how many pairs to keep so that no type exceeds `max_share` of the kept total.

    Applies only when two or more types have pairs; a share below 1/types is raised to 1/types (an even
    split), since no mix could satisfy it.
    """
    present = {t: c for t, c in counts.items() if c > 0}
    if len(present) < 2 or max_share >= 1.0:
        return dict(counts)
    share = max(max_share, 1.0 / len(present))
    targets = dict(present)
    while True:
        largest = max(targets, key=lambda t: (targets[t], t))
        total = sum(targets.values())
        if targets[largest] <= share * total + 1e-9:
            break
        others = total - targets[largest]
        targets[largest] = max(1, math.floor(share * others / (1.0 - share) + 1e-9)) if share < 1 else others
    return {t: targets.get(t, 0) for t in counts}


def apply_gates(
    pairs: Sequence[Candidate], documents: dict[tuple[int, int], str], filters: SynthesisFilters
) -> Outcome:
    """Run every gate over `pairs` (in order); `documents[(file, line)]` is each pair's source text."""
    outcome = Outcome()
    survivors: list[Candidate] = []
    seen_questions: set[str] = set()
    for pair in pairs:
        problem = format_problem(pair)
        if problem:
            outcome.rejected["format"].append(replace(pair, problem=problem))
            continue
        q, a = len(words(pair.question)), len(words(pair.answer))
        if not filters.min_question_tokens <= q <= filters.max_question_tokens:
            why = f"question has {q} words (allowed {filters.min_question_tokens}-{filters.max_question_tokens})"
            outcome.rejected["length"].append(replace(pair, problem=why))
            continue
        if not filters.min_answer_tokens <= a <= filters.max_answer_tokens:
            why = f"answer has {a} words (allowed {filters.min_answer_tokens}-{filters.max_answer_tokens})"
            outcome.rejected["length"].append(replace(pair, problem=why))
            continue
        score = grounding(pair.answer, documents.get((pair.file, pair.line), ""))
        if score < filters.grounding:
            why = f"grounding {score:.2f} < {filters.grounding:g}"
            outcome.rejected["grounding"].append(replace(pair, problem=why))
            continue
        if filters.dedupe:
            normal = " ".join(words(pair.question))
            if normal in seen_questions:
                outcome.rejected["duplicate"].append(replace(pair, problem="same question as an earlier pair"))
                continue
            seen_questions.add(normal)
        survivors.append(pair)

    if filters.dedupe:
        unique = []
        for pair, match in zip(survivors, near_duplicates(survivors, filters.near_duplicate), strict=True):
            if match is None:
                unique.append(pair)
            else:
                earlier = survivors[match]
                why = f"near duplicate of: {earlier.question} {earlier.answer}"[:300]
                outcome.rejected["near-duplicate"].append(replace(pair, problem=why))
        survivors = unique

    counts = Counter(p.type for p in survivors)
    targets = balance_targets(dict(counts), filters.max_type_share)
    keep_masks = {t: iter(_spread(counts[t], targets[t])) for t in counts}
    for pair in survivors:
        if next(keep_masks[pair.type]):
            outcome.kept.append(pair)
        else:
            why = f"type '{pair.type}' over {filters.max_type_share:g} of the kept pairs"
            outcome.rejected["type-balance"].append(replace(pair, problem=why))
    return outcome
