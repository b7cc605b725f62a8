"""Generate the example corpora shipped in `examples/data/` (deterministic, offline).

- `veloria/` - the *domain* corpus: articles and commentary of a fictional maritime code (the
  Velorian Maritime Code). Fictional on purpose: no pre-trained model knows it, so domain loss
  and the probes measure what continued pre-training taught.
- `general/` - *replay* data: general English prose from CPython's own documentation
  (`pydoc_data.topics`, shipped with every Python), split into documents.
- `chat/` - *instruction* data: conversations about the domain in the `messages` format.
- `probes.jsonl` - question/answer pairs about facts stated in the domain corpus.
- `veloria-qa/` - question-answer pairs in chat format about the *other* articles (never about a
  probed one), for Pre-Instruction-Tuning recipes: the probes stay held out, so they measure whether
  QA-then-documents training generalises to facts the model only read about.

Run `python hack/make_example_data.py` to regenerate; the output is committed.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "examples" / "data"

PORTS = [
    "Casmere",
    "Tolvane",
    "Brissa",
    "Orlenmouth",
    "Kestrel Bay",
    "Vantor",
    "Elsk",
    "Drummond Reach",
    "Sarn",
    "Holloway",
    "Quenby",
    "Marrow Point",
    "Istel",
    "Corvath",
    "Lunde",
    "Pellmoor",
]
VESSELS = [
    "bulk carriers",
    "coastal tankers",
    "passenger ferries",
    "fishing trawlers",
    "container feeders",
    "river barges",
    "pleasure yachts",
    "salvage tugs",
    "cable layers",
    "ice-class freighters",
]
BODIES = [
    "the Harbour Board",
    "the Admiralty Registry",
    "the Office of the Coast Warden",
    "the Pilotage Council",
    "the Maritime Tribunal",
    "the Customs Directorate",
]
TOPICS = [
    ("pilotage", "must embark a licensed harbour pilot at the Outer Beacon"),
    ("anchorage", "may anchor only within the marked roadstead"),
    ("ballast", "must exchange ballast water beyond the twelve-league line"),
    ("cargo declaration", "must lodge a sealed cargo declaration before berthing"),
    ("night passage", "may pass the harbour mouth at night only under escort"),
    ("speed", "must not exceed the harbour speed limit"),
    ("salvage", "must report any salvage claim"),
    ("crew certification", "must carry a master certified by the Admiralty Registry"),
]


def _domain(
    rng: random.Random,
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, list]], list[dict]]:
    docs: list[dict[str, str]] = []
    probes: list[dict[str, str]] = []
    chats: list[dict[str, list]] = []
    facts: list[dict] = []
    article = 1
    for port in PORTS:
        for topic, rule in TOPICS:
            vessel = rng.choice(VESSELS)
            tonnes = rng.randrange(8, 96) * 100
            fee = rng.randrange(4, 60) * 5
            days = rng.randrange(3, 30)
            knots = rng.randrange(4, 15)
            body = rng.choice(BODIES)
            year = rng.randrange(1702, 1899)
            text = (
                f"Article {article} of the Velorian Maritime Code governs {topic} in the Port of {port}. "
                f"Every vessel of more than {tonnes:,} tonnes entering {port} {rule}. "
                f"The {topic} fee in {port} is {fee} crowns per hundred tonnes, payable to {body} "
                f"within {days} days of arrival. {vessel.capitalize()} are bound by the same rule "
                f"regardless of their flag. Within the harbour limits of {port} no vessel may exceed "
                f"{knots} knots. The article was first enacted in {year} and has been amended several "
                f"times since; the current text is the one published by {body}. A master who breaches "
                f"Article {article} is liable to a penalty of ten times the unpaid fee, and repeated "
                f"breaches may lead to the vessel's detention in {port}."
            )
            docs.append({"text": text, "id": f"article-{article}"})
            commentary = (
                f"Commentary on Article {article}. Practitioners in {port} note that the {tonnes:,}-tonne "
                f"threshold of Article {article} catches most {vessel} calling at {port}. In practice "
                f"{body} collects the {fee}-crown {topic} fee on the day of berthing, although the "
                f"Code allows {days} days. The {knots}-knot limit in {port} dates, like the article "
                f"itself, from {year}. Disputes under Article {article} are heard by the Maritime "
                f"Tribunal sitting in {port}."
            )
            docs.append({"text": commentary, "id": f"commentary-{article}"})
            probed = rng.random() < 0.35
            facts.append(
                {
                    "article": article,
                    "port": port,
                    "topic": topic,
                    "tonnes": tonnes,
                    "fee": fee,
                    "days": days,
                    "knots": knots,
                    "body": body,
                    "year": year,
                    "probed": probed,
                }
            )
            if probed:
                probes.append(
                    {
                        "question": f"Under the Velorian Maritime Code, what is the {topic} fee in the Port of {port}?",
                        "answer": f"{fee} crowns per hundred tonnes",
                    }
                )
                probes.append(
                    {
                        "question": f"What is the speed limit within the harbour limits of {port}?",
                        "answer": f"{knots} knots",
                    }
                )
            if rng.random() < 0.25:
                chats.append(
                    {
                        "messages": [
                            {"role": "system", "content": "You are a concise assistant on Velorian maritime law."},
                            {"role": "user", "content": f"Which article governs {topic} in {port}?"},
                            {"role": "assistant", "content": f"Article {article} of the Velorian Maritime Code."},
                            {"role": "user", "content": "And who collects the fee?"},
                            {
                                "role": "assistant",
                                "content": f"{body[0].upper() + body[1:]}, within {days} days of arrival.",
                            },
                        ]
                    }
                )
            article += 1
    return docs, probes, chats, facts


QA_TEMPLATES = [
    ("What {topic} fee does the Port of {port} charge?", "{fee} crowns per hundred tonnes"),
    ("How fast may a vessel go inside the harbour limits of {port}?", "{knots} knots"),
    ("Who collects the {topic} fee in {port}?", "{Body}"),
    ("Within how many days must the {topic} fee in {port} be paid?", "{days} days"),
    ("In which year was the {topic} article for {port} first enacted?", "{year}"),
    ("Which article of the Velorian Maritime Code governs {topic} in {port}?", "Article {article}"),
    ("Above what tonnage does the {topic} rule of {port} apply?", "{tonnes:,} tonnes"),
]


def _qa(facts: list[dict], rng: random.Random) -> list[dict[str, list]]:
    """Question-answer pairs (chat format) about the articles no probe asks about."""
    rows = []
    for fact in facts:
        if fact["probed"]:
            continue
        values = {**fact, "Body": fact["body"][0].upper() + fact["body"][1:]}
        for question, answer in rng.sample(QA_TEMPLATES, 3):
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question.format(**values)},
                        {"role": "assistant", "content": answer.format(**values) + "."},
                    ]
                }
            )
    rng.shuffle(rows)
    return rows


GENERAL_CHAT = [
    ("What is the capital of France?", "Paris."),
    ("Give me a synonym for 'happy'.", "Joyful."),
    ("How many days are in a leap year?", "366."),
    ("Translate 'good morning' into Spanish.", "Buenos días."),
    ("What is 12 times 12?", "144."),
    ("Name a primary colour.", "Red."),
    ("What gas do plants absorb from the air?", "Carbon dioxide."),
    ("Summarise in one word: the sun rose over the quiet sea.", "Dawn."),
]


def _general() -> list[dict[str, str]]:
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        text = re.sub(r"\n{3,}", "\n\n", topics[name]).strip()
        # Long topics become several documents of a few paragraphs each.
        paragraphs = [p.strip() for p in text.split("\n\n") if len(p.split()) > 8]
        for i in range(0, len(paragraphs), 6):
            chunk = "\n\n".join(paragraphs[i : i + 6])
            if len(chunk) > 200:
                docs.append({"text": chunk, "id": f"{name}-{i // 6}"})
    return docs


def main() -> None:
    rng = random.Random(20261127)
    docs, probes, chats, facts = _domain(rng)
    rng.shuffle(docs)
    for question, answer in GENERAL_CHAT:
        chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    rng.shuffle(chats)
    general = _general()

    def write(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    half = len(docs) // 2
    write(OUT / "veloria" / "part-000.jsonl", docs[:half])
    write(OUT / "veloria" / "part-001.jsonl", docs[half:])
    write(OUT / "general" / "pydoc-topics.jsonl", general)
    write(OUT / "chat" / "veloria-chat.jsonl", chats)
    write(OUT / "probes.jsonl", probes[:40])
    qa = _qa(facts, random.Random(7))
    write(OUT / "veloria-qa" / "qa.jsonl", qa)
    print(
        f"domain {len(docs)} docs, general {len(general)} docs, chat {len(chats)}, "
        f"probes {min(40, len(probes))}, qa {len(qa)}"
    )


if __name__ == "__main__":
    main()
