"""The rooms of the code, generated for docs/architecture.md: every package and module of the three layers
with the first sentence of its docstring (`make docs` splices it between the `rooms:begin` / `rooms:end`
markers; tests/unit/test_crd.py fails when the committed file differs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (("core", "cpt_core"), ("operator", "cpt_operator"), ("trainer", "cpt_trainer"))


def summary(path: Path) -> str:
    """The first sentence of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    paragraph = " ".join(doc.split("\n\n", 1)[0].split())
    match = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", paragraph)
    sentence = match.group(1) if match else paragraph
    if not sentence:
        raise SystemExit(f"{path.relative_to(ROOT)} has no docstring: say in one sentence what it is")
    return sentence if sentence.endswith(".") else sentence + "."


def _entries(directory: Path, depth: int) -> list[str]:
    lines = []
    modules = sorted(p for p in directory.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    packages = sorted(p for p in directory.iterdir() if (p / "__init__.py").is_file())
    indent = "  " * depth
    for module in modules:
        lines.append(f"{indent}- `{module.name}`: {summary(module)}")
    for package in packages:
        lines.append(f"{indent}- **`{package.name}/`** {summary(package / '__init__.py')}")
        lines += _entries(package, depth + 1)
    return lines


def rooms_tree() -> str:
    """The tree of every layer, one line per package and module."""
    out = []
    for layer, package in LAYERS:
        top = ROOT / layer / package
        out.append(f"- **`{layer}/{package}/`** {summary(top / '__init__.py')}")
        out += _entries(top, 1)
    return "\n".join(out) + "\n"


_ROOMS = re.compile(r"(<!-- rooms:begin[^\n]*-->\n).*?(<!-- rooms:end -->)", re.S)


def splice_rooms(text: str) -> str:
    if not _ROOMS.search(text):
        raise SystemExit("docs/architecture.md lost its <!-- rooms:begin --> / <!-- rooms:end --> markers")
    return _ROOMS.sub(lambda m: m.group(1) + rooms_tree() + m.group(2), text)


if __name__ == "__main__":
    print(rooms_tree(), end="")
