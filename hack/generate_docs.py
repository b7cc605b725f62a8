"""Regenerate the references derived from the code: docs/api.md, docs/progress.md, the
troubleshooting table of docs/operations.md (between its `reasons:begin` / `reasons:end` markers),
the rooms of docs/architecture.md (between `rooms:begin` / `rooms:end`, hack/rooms.py) and the Helm
chart's README.md (from its values.yaml comments, hack/chart_readme.py).

`make docs` runs this; tests/unit/test_crd.py fails when a committed file differs from `generated()`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))  # `hack.` is a package both for `make docs` and for the drift test

from cpt_core.contract.reasons import reasons_table  # noqa: E402
from cpt_core.schema.docs import api_reference, progress_reference  # noqa: E402

from hack.chart_readme import chart_readme  # noqa: E402
from hack.rooms import splice_rooms  # noqa: E402

_REASONS = re.compile(r"(<!-- reasons:begin[^\n]*-->\n).*?(<!-- reasons:end -->)", re.S)


def splice_reasons(text: str) -> str:
    if not _REASONS.search(text):
        raise SystemExit("docs/operations.md lost its <!-- reasons:begin --> / <!-- reasons:end --> markers")
    return _REASONS.sub(lambda m: m.group(1) + reasons_table() + m.group(2), text)


def generated() -> dict[str, str]:
    return {
        "docs/api.md": api_reference(),
        "docs/progress.md": progress_reference(),
        "docs/operations.md": splice_reasons((ROOT / "docs" / "operations.md").read_text()),
        "docs/architecture.md": splice_rooms((ROOT / "docs" / "architecture.md").read_text()),
        "charts/cpt-operator/README.md": chart_readme(),
    }


def main() -> None:
    for relative, text in generated().items():
        path = ROOT / relative
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {relative}", file=sys.stderr)


if __name__ == "__main__":
    main()
