"""Evaluation measures as pure functions: instruction-following rules, probe scoring, the forgetting
watch's signals, and the regularisation penalty's gradient."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from cpt_core.api.v1alpha1 import Forgetting
from cpt_core.api.v1alpha1.status import EvalResult, InstructionFollowingScores, ProbeScores
from cpt_trainer.eval.forgetting import ForgettingWatch
from cpt_trainer.eval.instruction_following import RULES, Prompt, check, parse_prompts, score
from cpt_trainer.eval.probes import Probe, exact_match, f1_score, score_answers
from cpt_trainer.train.regularization import penalty

# (rule, answer, passes?)
RULE_TABLE: list[tuple[dict[str, Any], str, bool]] = [
    ({"type": "word_count", "max": 5}, "One two three four five.", True),
    ({"type": "word_count", "max": 5}, "One two three four five six.", False),
    ({"type": "word_count", "min": 3}, "Too short", False),
    ({"type": "sentence_count", "count": 2}, "First one. Second one!", True),
    ({"type": "sentence_count", "count": 2}, "Only one here.", False),
    ({"type": "paragraph_count", "count": 2}, "Para one.\n\nPara two.", True),
    ({"type": "paragraph_count", "count": 2}, "All in one paragraph.", False),
    ({"type": "bullet_count", "count": 3}, "* a\n* b\n- c", True),
    ({"type": "bullet_count", "count": 3}, "* a\n* b", False),
    ({"type": "keywords", "words": ["ship", "water"]}, "A Ship floats on water.", True),
    ({"type": "keywords", "words": ["ship", "water"]}, "A boat floats on water.", False),
    ({"type": "forbidden_words", "words": ["wet"]}, "The rain fell all day.", True),
    ({"type": "forbidden_words", "words": ["wet"]}, "Everything was Wet.", False),
    ({"type": "keyword_frequency", "word": "river", "min": 2}, "A river, then another river.", True),
    ({"type": "keyword_frequency", "word": "river", "min": 2}, "One river.", False),
    ({"type": "json_format"}, '```json\n{"city": "Paris"}\n```', True),
    ({"type": "json_format"}, "city: Paris", False),
    ({"type": "title"}, "<<A Lost Cat>>\nShe came home.", True),
    ({"type": "title"}, "A Lost Cat", False),
    ({"type": "lowercase"}, "the sea is calm", True),
    ({"type": "lowercase"}, "The sea is calm", False),
    ({"type": "uppercase"}, "THE MOON IS BRIGHT.", True),
    ({"type": "uppercase"}, "The moon", False),
    ({"type": "starts_with", "text": "Yes"}, "yes, it is.", True),
    ({"type": "starts_with", "text": "Yes"}, "No.", False),
    ({"type": "ends_with", "text": "That is all."}, "Because of scattering. That is all.", True),
    ({"type": "ends_with", "text": "That is all."}, "Because of scattering.", False),
    ({"type": "no_commas"}, "Pizza is great", True),
    ({"type": "no_commas"}, "Pizza, pasta", False),
    ({"type": "quotation"}, '"Rome"', True),
    ({"type": "quotation"}, "Rome", False),
    ({"type": "placeholders", "min": 2}, "Dear [name], see you at [place].", True),
    ({"type": "placeholders", "min": 2}, "Dear [name], see you.", False),
    ({"type": "postscript", "marker": "P.S."}, "Thanks!\nP.S. See you soon.", True),
    ({"type": "postscript", "marker": "P.S."}, "Thanks!", False),
]


@pytest.mark.parametrize(("rule", "answer", "passes"), RULE_TABLE)
def test_instruction_following_rules(rule: dict[str, Any], answer: str, passes: bool) -> None:
    assert check(answer, rule) is passes


def test_every_rule_type_is_in_the_table_and_the_default_set_parses() -> None:
    assert {rule["type"] for rule, _, _ in RULE_TABLE} == set(RULES)
    from importlib import resources

    text = resources.files("cpt_trainer").joinpath("assets/ifeval/default.jsonl").read_text()
    prompts = parse_prompts(text, "default")
    assert len(prompts) >= 20
    assert {r["type"] for p in prompts for r in p.rules} == set(RULES)  # the shipped set exercises every rule
    assert all(p.rules for p in prompts)


def test_scores_are_prompt_and_instruction_level() -> None:
    prompts = [
        Prompt("a", ({"type": "lowercase"}, {"type": "no_commas"})),
        Prompt("b", ({"type": "uppercase"},)),
    ]
    result = score(prompts, ["all good here", "not upper"])
    assert result == InstructionFollowingScores(
        prompt_accuracy=0.5,
        instruction_accuracy=2 / 3,
        count=2,
        per_rule={"lowercase": 1.0, "no_commas": 1.0, "uppercase": 0.0},
    )


def test_a_bad_prompt_file_names_the_line_and_the_fix() -> None:
    good = json.dumps({"prompt": "x", "rules": [{"type": "lowercase"}]})
    with pytest.raises(ValueError, match=r"f\.jsonl line 2: unknown rule type 'shouting'"):
        parse_prompts(good + "\n" + json.dumps({"prompt": "y", "rules": [{"type": "shouting"}]}), "f.jsonl")
    with pytest.raises(ValueError, match=r"line 1: rule 'keywords' needs words"):
        parse_prompts(json.dumps({"prompt": "y", "rules": [{"type": "keywords"}]}), "f.jsonl")
    with pytest.raises(ValueError, match=r"line 1: expected \{\"prompt\""):
        parse_prompts("{not json", "f.jsonl")


def test_exact_match_is_normalised_equality_not_a_prefix() -> None:
    assert exact_match("The 8 knots.", "8 knots")
    assert not exact_match("8 knots and a fee of 5 crowns", "8 knots")  # a prefix is not a match
    assert f1_score("8 knots and more", "8 knots") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    scores = score_answers([Probe("q", "8 knots"), Probe("q", "Elsk")], ["8 knots\nextra line", "Casmere"], 40)
    assert scores == ProbeScores(exact_match=0.5, f1=0.5, count=2, available=40)


def result(general: float, instruction: float | None = None, following: float | None = None) -> EvalResult:
    scores = (
        None
        if following is None
        else InstructionFollowingScores(prompt_accuracy=following, instruction_accuracy=following)
    )
    return EvalResult(step=0, general_loss=general, instruction_loss=instruction, instruction_following=scores)


def test_the_forgetting_watch_checks_each_signal_against_its_limit() -> None:
    watch = ForgettingWatch(
        Forgetting(maxGeneralLossIncrease=0.1, maxInstructionLossIncrease=0.2, maxInstructionFollowingDrop=0.1)
    )
    base = result(3.0, 2.0, 0.6)
    assert watch.observe(base, result(3.2, 2.1, 0.55)) == [] and not watch.detected
    assert watch.observe(base, result(3.5, 2.1, 0.55)) == ["generalLoss"] and watch.detected
    assert watch.observe(base, result(3.0, 2.5, 0.4)) == ["instructionLoss", "instructionFollowing"]
    assert watch.recovered(base, result(3.1, 2.1, 0.58))  # all under half their limits
    assert not watch.recovered(base, result(3.2, 2.1, 0.58))  # general +6.7 % > 5 %
    assert watch.detected  # detection is remembered for the status


def test_unwatched_signals_never_count() -> None:
    watch = ForgettingWatch(Forgetting(maxGeneralLossIncrease=0.1))
    assert watch.observe(result(3.0, 2.0, 0.9), result(3.0, 9.0, 0.0)) == []


def test_the_penalty_gradient_matches_its_formula() -> None:
    torch.manual_seed(0)
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    anchor = [p.detach() + 0.1 * torch.randn_like(p) for p in params]
    fisher = [torch.rand_like(p) for p in params]
    for f in (None, fisher):
        value = penalty(params, anchor, f, strength=3.0)
        grads = torch.autograd.grad(value, params)
        for i, (p, a, g) in enumerate(zip(params, anchor, grads, strict=True)):
            weight = f[i] if f is not None else torch.ones_like(p)
            assert torch.allclose(g, 3.0 * weight * (p.detach() - a), atol=1e-6)
        expected = (
            0.5
            * 3.0
            * sum(
                ((f[i] if f else 1) * (p.detach() - a) ** 2).sum()
                for i, (p, a) in enumerate(zip(params, anchor, strict=True))
            )
        )
        assert float(value.detach()) == pytest.approx(float(expected), rel=1e-6)
