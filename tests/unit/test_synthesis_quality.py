"""Synthesis, pure parts: the quality gates on hand-made pairs, the cloze writer's determinism, reply
parsing, and the API's rules for `synthesize` (pydantic and CEL, as `cpt validate` and the API server)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cpt_core.api.v1alpha1 import SynthesisFilters
from cpt_core.validation.validate import cel_violations, validate
from cpt_trainer.synthesis.quality import Candidate, apply_gates, balance_targets, grounding, near_duplicates
from cpt_trainer.synthesis.writers import ClozeWriter, SourceDocument, parse_reply

from devkit.jobs import tiny_job_doc

DOC = (
    "Article 86 of the Velorian Maritime Code governs speed in the Port of Quenby. The speed fee in Quenby is "
    "30 crowns per hundred tonnes, payable to the Customs Directorate within 24 days of arrival. Within the "
    "harbour limits of Quenby no vessel may exceed 9 knots."
)
DOCS = {(0, 1): DOC}


def pair(question: str, answer: str, kind: str = "factual", **kw: Any) -> Candidate:
    return Candidate(kind, question, answer, 0, 1, **kw)


GOOD = [
    pair("What is the speed fee in Quenby?", "30 crowns per hundred tonnes"),
    pair("Who collects the speed fee in Quenby?", "The Customs Directorate"),
    pair("How fast may a vessel go within the harbour limits of Quenby?", "9 knots"),
]
# (pair, the gate that must reject it)
BAD = [
    (pair("What is the fee", "", problem="reply not in the form"), "format"),
    (pair("The speed fee in Quenby is 30 crowns.", "30 crowns"), "format"),  # not a question
    (pair("Is the fee 30 crowns per hundred tonnes?", "30 crowns per hundred tonnes"), "format"),  # answer given away
    (pair("What is the fee?", "30 crowns\nQuestion: and more? Answer: yes"), "format"),
    (pair("Fee?", "30 crowns"), "length"),  # one-word question
    (pair("What does the article say about speed in Quenby?", " ".join(["word"] * 80)), "length"),
    (pair("Which body regulates pilotage in Quenby?", "The Admiralty Registry of Velmont"), "grounding"),
    (pair("What is the speed fee in Quenby?", "30 crowns"), "duplicate"),  # same question as GOOD[0]
    (pair("How fast may a vessel go within the harbour limits of Quenby?!", "9 knots."), "duplicate"),
]


def test_every_gate_rejects_its_bad_pair_and_keeps_the_good_ones() -> None:
    pairs = GOOD + [p for p, _ in BAD]
    outcome = apply_gates(pairs, DOCS, SynthesisFilters(maxAnswerTokens=40))
    assert [p.question for p in outcome.kept] == [p.question for p in GOOD]
    for bad, gate in BAD:
        rejected = [p.question for p in outcome.rejected[gate]]
        assert bad.question in rejected, (gate, bad, outcome.rejected)
    assert sum(outcome.counts().values()) == len(BAD)
    assert all(p.problem for ps in outcome.rejected.values() for p in ps)  # every rejection says why


def test_grounding_is_span_match_or_content_word_overlap() -> None:
    assert grounding("30 crowns per hundred tonnes", DOC) == 1.0
    assert grounding("thirty crowns", DOC) == 0.5  # 'crowns' found, 'thirty' not
    assert grounding("the Admiralty", DOC) == 0.0  # function words do not count as support
    assert grounding("", DOC) == 0.0


def test_near_duplicates_are_found_exactly_and_only_above_the_threshold() -> None:
    pairs = [
        pair("What is the speed limit within the harbour limits of Quenby?", "9 knots"),
        pair("What is the speed limit inside the harbour limits of Quenby?", "9 knots"),  # near
        pair("What is the speed limit within the harbour limits of Tolvane?", "14 knots"),  # another fact
        pair("Who collects the fee?", "The Customs Directorate"),
    ]
    assert near_duplicates(pairs, 0.6) == [None, 0, None, None]
    assert near_duplicates(pairs, 0.95) == [None, None, None, None]

    # The prefix filter must agree with brute force.
    import itertools

    from cpt_trainer.synthesis.quality import _shingles

    many = [pair(f"What is the {a} {b} of port {c}?", f"{c} {a}") for a, b, c in itertools.product("xyz", "uv", "pq")]
    sets = [_shingles(p) for p in many]
    for threshold in (0.3, 0.5, 0.8):
        expected: list[int | None] = []
        kept: list[int] = []
        for i, s in enumerate(sets):
            match = next((j for j in kept if len(s & sets[j]) / len(s | sets[j]) >= threshold), None)
            expected.append(match)
            if match is None:
                kept.append(i)
        got = near_duplicates(many, threshold)
        assert [g is None for g in got] == [e is None for e in expected], threshold


def test_type_balance_cuts_the_largest_type_evenly() -> None:
    assert balance_targets({"factual": 10, "summary": 2}, 0.6) == {"factual": 3, "summary": 2}
    assert balance_targets({"factual": 5, "summary": 5}, 0.6) == {"factual": 5, "summary": 5}
    assert balance_targets({"cloze": 50}, 0.6) == {"cloze": 50}  # one type: nothing to balance
    assert balance_targets({"a": 9, "b": 9, "c": 1}, 0.2) == {"a": 1, "b": 1, "c": 1}  # below 1/3 means even
    doc = " ".join(f"Fact {i} is {i} crowns." for i in range(12))
    pairs = [Candidate("factual", f"What is fact {i}?", f"{i} crowns", 0, 1) for i in range(8)]
    pairs += [Candidate("summary", "What does the text list?", "Fact 11 is 11 crowns", 0, 1)]
    outcome = apply_gates(pairs, {(0, 1): doc}, SynthesisFilters(maxTypeShare=0.6, dedupe=False))
    kept = [p.question for p in outcome.kept if p.type == "factual"]
    assert len(kept) == 1 and len(outcome.rejected["type-balance"]) == 7


def test_cloze_is_deterministic_and_grounded() -> None:
    writer = ClozeWriter(questions_per_document=4)
    document = SourceDocument(3, 17, DOC)
    first, again = writer.questions(document), ClozeWriter(4).questions(document)
    assert first == again and len(first) == 4
    assert len({p.question for p in first}) == 4
    for p in first:
        assert "____" in p.question and p.answer in DOC and (p.file, p.line) == (3, 17)
        assert p.question.replace("____", p.answer).count(p.answer) >= 1
    # Another position in the corpus asks other questions of the same text (the hash includes it).
    assert ClozeWriter(4).questions(SourceDocument(4, 17, DOC)) != first
    outcome = apply_gates(first, {(3, 17): DOC}, SynthesisFilters())
    assert outcome.kept == first


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (" What is the fee?\nAnswer: 30 crowns", ("What is the fee?", "30 crowns")),
        ("What is the fee?\n\n**Answer:** 30 crowns\n\nQuestion: more?", ("What is the fee?", "30 crowns")),
        (
            "Question: Who collects it?\nAnswer: The Board.\nQuestion: next?\nAnswer: x",
            ("Who collects it?", "The Board."),
        ),
        ("What is the fee? The answer is 30 crowns.", None),
        ("", None),
    ],
)
def test_model_replies_are_parsed_or_rejected(reply: str, expected: tuple[str, str] | None) -> None:
    assert parse_reply(reply) == expected


# --------------------------------------------------------------------------- the API


def synthesized(**synthesize: Any) -> dict[str, Any]:
    doc = tiny_job_doc()
    doc["spec"]["data"]["sources"].append(
        {"name": "veloria-qa", "role": "instruction", "weight": 5, "synthesize": {"from": "veloria", **synthesize}}
    )
    return doc


def test_a_synthesised_source_is_valid_chat_data_without_uris() -> None:
    report = validate(synthesized(generator={"kind": "cloze"}, output="s3://corpora/qa/"))
    assert report.ok, report.errors
    source = report.job.spec.data.sources[2]
    assert source.format.value == "chat" and source.uris == []
    assert cel_violations(synthesized(generator={"kind": "cloze"})) == []
    resolved = report.job.spec.resolved()
    assert resolved.data.sources[2].synthesize.output == "s3://corpora/qa/"
    default = validate(synthesized()).job.spec.resolved().data.sources[2].synthesize
    assert default.output.endswith("/_cache/synthetic/veloria-qa/")
    assert default.generator.model == resolved.model.source  # the job's model writes by default


BAD_SETTINGS = [
    ({"from": "nowhere"}, "spec.data.sources[2].synthesize.from", "not a source"),
    ({"from": "veloria-qa"}, "spec.data.sources[2].synthesize.from", "itself"),
    ({"generator": {"kind": "cloze", "model": "pkg://x/y.gguf"}}, "synthesize.generator.model", "kind: cloze"),
    ({"generator": {"kind": "poem"}}, "synthesize.generator.kind", "must be one of"),
    ({"generator": {"questionsPerDocument": 0}}, "synthesize.generator.questionsPerDocument", ">= 1"),
    ({"generator": {"types": ["factual", "factual"]}}, "synthesize.generator.types[1]", "duplicate"),
    ({"generator": {"types": ["trivia"]}}, "synthesize.generator.types[0]", "must be one of"),
    (
        {"generator": {"prompts": {"summary": "{document}"}, "types": ["factual"]}},
        "generator.prompts.summary",
        "not one of",
    ),
    ({"generator": {"prompts": {"factual": "Ask about {doc}"}}}, "generator.prompts.factual", "{doc}"),
    ({"generator": {"prompts": {"factual": "Ask about {focus}"}}}, "generator.prompts.factual", "{document}"),
    ({"generator": {"maxNewTokens": 2}}, "synthesize.generator.maxNewTokens", ">= 8"),
    ({"generator": {"model": "ftp://host/m"}}, "synthesize.generator.model", "unsupported URI scheme"),
    ({"filters": {"grounding": 1.5}}, "synthesize.filters.grounding", "<= 1"),
    ({"filters": {"minAnswerTokens": 5, "maxAnswerTokens": 2}}, "synthesize.filters.maxAnswerTokens", ">= minAnswer"),
    ({"output": "ftp://x/y"}, "synthesize.output", "unsupported URI scheme"),
    ({"fromm": "veloria"}, "synthesize.fromm", "unknown field"),
]


@pytest.mark.parametrize(("settings", "path", "fragment"), BAD_SETTINGS, ids=[b[1] + b[2] for b in BAD_SETTINGS])
def test_bad_synthesis_settings_name_the_field(settings: dict[str, Any], path: str, fragment: str) -> None:
    doc = synthesized()
    synthesis = doc["spec"]["data"]["sources"][2]["synthesize"]
    synthesis.update(settings)
    if "fromm" in settings:
        del synthesis["from"]
    errors = [str(e) for e in validate(doc).errors]
    assert any(path in e and fragment in e for e in errors), errors
    assert all("\n" not in e for e in errors)


def test_uris_and_format_rules_for_synthesised_sources() -> None:
    doc = synthesized()
    doc["spec"]["data"]["sources"][2]["uris"] = ["data/qa/"]
    assert any("sources[2].uris: leave unset" in str(e) for e in validate(doc).errors)
    doc = synthesized()
    doc["spec"]["data"]["sources"][2]["format"] = "jsonl"
    assert any("sources[2].format: a synthesised source is chat" in str(e) for e in validate(doc).errors)
    doc = synthesized(**{"from": "general"})
    doc["spec"]["data"]["sources"][1]["format"] = "chat"
    assert any("is chat data, not documents" in str(e) for e in validate(doc).errors)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda s: s[2]["synthesize"].update({"from": "veloria-qa"}), "synthesize.from"),
        (lambda s: s[2]["synthesize"].update({"from": "missing"}), "synthesize.from"),
        (lambda s: s[2].update({"uris": ["x/"]}), "sources[2].uris"),
        (lambda s: s[0].pop("uris"), "sources[0].uris"),
        (lambda s: s[2].update({"format": "jsonl"}), "sources[2].format"),
        (lambda s: s[2]["synthesize"].update({"generator": {"kind": "cloze", "model": "m"}}), "generator.model"),
        (lambda s: s[2]["synthesize"].update({"filters": {"minQuestionTokens": 9, "maxQuestionTokens": 3}}), "filters"),
    ],
)
def test_cel_rules_say_what_the_api_server_would(mutate: Any, fragment: str) -> None:
    doc = copy.deepcopy(synthesized())
    mutate(doc["spec"]["data"]["sources"])
    problems = [str(p) for p in cel_violations(doc)]
    assert any(fragment in p for p in problems), problems
