"""Instruction-following retention: prompts with verifiable constraints, scored by rules.

In the manner of IFEval (Zhou et al., 2023): each prompt carries rules that a program can check
on the answer -- no judge model. Scores are the share of prompts whose answer passes every rule
(prompt accuracy) and the share of all rules passed (instruction accuracy), at step 0 and at every
evaluation, so a drop measures what continued pre-training cost the model's instruction following.

A prompt file is JSON lines: `{"prompt": "...", "rules": [{"type": "word_count", "max": 50}, ...]}`.
The rule types (`RULES`) are written here by hand: they are a few lines each, and the reference
IFEval implementation is not packaged as a library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from cpt_core.api.v1alpha1.status import InstructionFollowingScores
from cpt_core.storage import Storage

Rule = dict[str, Any]

_WORD = re.compile(r"\b[\w'-]+\b")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*[*-]\s+\S", re.M)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _within(value: int, rule: Rule) -> bool:
    if "count" in rule:
        return value == int(rule["count"])
    return int(rule.get("min", 0)) <= value <= int(rule.get("max", 10**9))


def _strip_fences(text: str) -> str:
    text = text.strip()
    match = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    return match.group(1) if match else text


def _json(text: str, rule: Rule) -> bool:
    try:
        json.loads(_strip_fences(text))
    except ValueError:
        return False
    return True


def _contains_all(text: str, rule: Rule) -> bool:
    low = text.lower()
    return all(str(word).lower() in low for word in rule["words"])


def _contains_none(text: str, rule: Rule) -> bool:
    low = {w.lower() for w in _words(text)}
    return not any(str(word).lower() in low for word in rule["words"])


def _frequency(text: str, rule: Rule) -> bool:
    count = sum(1 for w in _words(text) if w.lower() == str(rule["word"]).lower())
    return _within(count, rule)


RULES: dict[str, Callable[[str, Rule], bool]] = {
    "word_count": lambda text, rule: _within(len(_words(text)), rule),
    "sentence_count": lambda text, rule: _within(len(_SENTENCE_END.findall(text.strip())), rule),
    "paragraph_count": lambda text, rule: _within(
        len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]), rule
    ),
    "bullet_count": lambda text, rule: _within(len(_BULLET.findall(text)), rule),
    "keywords": _contains_all,
    "forbidden_words": _contains_none,
    "keyword_frequency": _frequency,
    "json_format": _json,
    "title": lambda text, rule: re.search(r"<<[^\n<>]+>>", text) is not None,
    "lowercase": lambda text, rule: any(c.isalpha() for c in text) and text == text.lower(),
    "uppercase": lambda text, rule: any(c.isalpha() for c in text) and text == text.upper(),
    "starts_with": lambda text, rule: text.strip().lower().startswith(str(rule["text"]).lower()),
    "ends_with": lambda text, rule: text.strip().lower().endswith(str(rule["text"]).lower()),
    "no_commas": lambda text, rule: "," not in text,
    "quotation": lambda text, rule: len(text.strip()) > 1 and text.strip()[0] == '"' and text.strip()[-1] == '"',
    "placeholders": lambda text, rule: _within(len(re.findall(r"\[[^\[\]\n]+\]", text)), {"min": 1, **rule}),
    "postscript": lambda text, rule: (
        re.search(rf"^\s*{re.escape(str(rule.get('marker', 'P.S.')))}", text, re.M) is not None
    ),
}

#: Fields each rule type needs (validated when a prompt file is loaded).
REQUIRED = {
    "keywords": ("words",),
    "forbidden_words": ("words",),
    "keyword_frequency": ("word",),
    "starts_with": ("text",),
    "ends_with": ("text",),
}


@dataclass(frozen=True)
class Prompt:
    prompt: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)


def check(text: str, rule: Rule) -> bool:
    """Whether `text` satisfies `rule` (pure)."""
    return RULES[rule["type"]](text, rule)


def score(prompts: Sequence[Prompt], answers: Sequence[str]) -> InstructionFollowingScores:
    """Prompt-level and instruction-level accuracy of `answers` (pure)."""
    passed_prompts, passed_rules, total_rules = 0, 0, 0
    per_type: dict[str, list[bool]] = {}
    for prompt, answer in zip(prompts, answers, strict=True):
        results = [check(answer, rule) for rule in prompt.rules]
        for rule, ok in zip(prompt.rules, results, strict=True):
            per_type.setdefault(rule["type"], []).append(ok)
        passed_prompts += all(results)
        passed_rules += sum(results)
        total_rules += len(results)
    return InstructionFollowingScores(
        prompt_accuracy=passed_prompts / len(prompts) if prompts else 0.0,
        instruction_accuracy=passed_rules / total_rules if total_rules else 0.0,
        count=len(prompts),
        per_rule={kind: round(sum(oks) / len(oks), 4) for kind, oks in sorted(per_type.items())},
    )


def parse_prompts(text: str, where: str) -> list[Prompt]:
    """Prompts from JSON lines; an error names the file, the line and the fix."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, rules = str(row["prompt"]), list(row["rules"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f'{where} line {number}: expected {{"prompt": ..., "rules": [...]}} ({exc})') from None
        for rule in rules:
            kind = rule.get("type") if isinstance(rule, dict) else None
            if kind not in RULES:
                raise ValueError(
                    f"{where} line {number}: unknown rule type {kind!r} (one of {', '.join(sorted(RULES))})"
                )
            missing = [key for key in REQUIRED.get(kind, ()) if key not in rule]
            if missing:
                raise ValueError(f"{where} line {number}: rule '{kind}' needs {', '.join(missing)}")
        out.append(Prompt(prompt, tuple(rules)))
    return out


def load_prompts(storage: Storage, uri: str | None) -> list[Prompt]:
    """The prompts at `uri`, or the default set shipped with the trainer."""
    if uri is None:
        text = resources.files("cpt_trainer").joinpath("assets/ifeval/default.jsonl").read_text()
        return parse_prompts(text, "the default instruction-following prompts")
    return parse_prompts(storage.read_text(uri), f"spec.evaluation.instructionFollowing.prompts: {uri}")
