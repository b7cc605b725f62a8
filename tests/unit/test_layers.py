"""The layers, their rooms and the words they share.

- Arrows one way: operator -> core <- trainer, and core imports no framework. Checked statically on
  the import graph (every import statement, lazy and type-checking ones included) and at run time
  (importing one side does not load the other or its frameworks), so the operator image runs without
  torch and the trainer image without kopf.
- No import cycles: none between modules, and none between the rooms (sub-packages and modules) of a
  package, so each room can be read knowing only the rooms below it.
- One home for the words both sides speak: no string of `cpt_core.contract.names` or `.layout` is
  written out anywhere else in the code.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

import pytest
from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import layout, names

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"core": "cpt_core", "operator": "cpt_operator", "trainer": "cpt_trainer"}

#: Top-level modules each layer must never import.
FORBIDDEN = {
    "core": {"cpt_operator", "cpt_trainer", "torch", "ray", "kopf", "deepspeed", "transformers", "aiohttp"},
    "operator": {"cpt_trainer", "torch", "ray", "deepspeed", "transformers"},
    "trainer": {"cpt_operator", "kopf", "aiohttp", "prometheus_client"},
}
#: A smell detector, not a reason to split one concept across files: a longer file asks for a second look.
MAX_LINES = 450


def sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def all_sources() -> list[Path]:
    return [path for layer in PACKAGES for path in sources(layer)]


# --------------------------------------------------------------------------- the import graph


def module_name(path: Path) -> str:
    """`trainer/cpt_trainer/train/trainer.py` -> `cpt_trainer.train.trainer` (a package: its __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts[1:])
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    top, *rest = name.split(".")
    layer = next((layer for layer, package in PACKAGES.items() if package == top), None)
    if layer is None:
        return False
    base = ROOT / layer / top / Path(*rest) if rest else ROOT / layer / top
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports, fully qualified (`from pkg import mod` counts as `pkg.mod`)."""
    own = module_name(path)
    base = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if _is_module(alias.name)}
        elif isinstance(node, ast.ImportFrom):
            module = (
                ".".join([*base[: len(base) - node.level + 1], node.module or ""]).strip(".")
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                child = f"{module}.{alias.name}"
                out |= {child} if _is_module(child) else {module} if _is_module(module) else set()
    return out


def imports_of(path: Path, package: str) -> set[str]:
    """Top-level module names `path` imports (relative imports resolve to its own package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
    return found


def module_graph() -> dict[str, set[str]]:
    """module -> the modules it imports. A module importing its own enclosing package (whose __init__
    re-exports it) is Python's usual package pattern, not a cycle, and is left out."""
    graph: dict[str, set[str]] = {}
    for path in all_sources():
        name = module_name(path)
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = imported_modules(path) - ancestors - {name}
    return graph


def room_graphs(graph: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For every package, the graph between its rooms (its direct sub-packages and modules): room A -> B
    when a module in A imports a module in B."""
    packages = {name for name in graph if any(other.startswith(name + ".") for other in graph)}
    rooms: dict[str, dict[str, set[str]]] = {package: {} for package in packages}

    def room(package: str, module: str) -> str | None:
        if not module.startswith(package + "."):
            return None
        return package + "." + module[len(package) + 1 :].split(".")[0]

    for module, targets in graph.items():
        for package in packages:
            source = room(package, module)
            if source is None:
                continue
            edges = rooms[package].setdefault(source, set())
            edges |= {target for t in targets if (target := room(package, t)) is not None and target != source}
    return rooms


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_one_way(layer: str) -> None:
    package = PACKAGES[layer]
    files = sources(layer)
    assert files, f"no sources under {layer}/"
    violations = {
        str(path.relative_to(ROOT)): sorted(imports_of(path, package) & FORBIDDEN[layer])
        for path in files
        if imports_of(path, package) & FORBIDDEN[layer]
    }
    assert violations == {}, f"{layer}/ imports what its layer must not: {violations}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cpt_trainer.train.trainer import Trainer\n    import torch.nn\n")
    assert imports_of(bad, "cpt_core") & FORBIDDEN["core"] == {"cpt_trainer", "torch"}


def test_no_module_imports_itself_back() -> None:
    graph = module_graph()
    assert len(graph) > 100, "the graph lost the sources"
    assert graph["cpt_trainer.train.trainer"] >= {"cpt_trainer.train.step", "cpt_trainer.checkpoint.checkpointer"}
    assert cycles(graph) == [], "import cycles (type-checking and lazy imports count)"


def test_rooms_import_each_other_one_way() -> None:
    rooms = room_graphs(module_graph())
    assert "cpt_trainer.checkpoint" in rooms["cpt_trainer"]["cpt_trainer.train"]
    tangled = {package: found for package, graph in rooms.items() if (found := cycles(graph))}
    assert tangled == {}, "rooms that import each other both ways"


def test_the_cycle_rules_catch_a_cycle() -> None:
    graph = {"p.a.x": {"p.b.y"}, "p.b.y": {"p.a.z"}, "p.a.z": set(), "p.a": set(), "p.b": set(), "p": set()}
    assert cycles(graph) == []  # no module cycle...
    assert cycles(room_graphs(graph)["p"]) == [["p.a", "p.b"]]  # ...but the rooms a and b import each other
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# --------------------------------------------------------------------------- the contract's words


def _contract_words() -> set[str]:
    """The strings of names.py and layout.py that are specific enough to police (paths, labels, env names)."""
    words: set[str] = set()

    def add(value: object) -> None:
        if isinstance(value, str):
            words.add(value)
        elif isinstance(value, (tuple, list, set, frozenset)):
            for item in value:
                add(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                add(key)
                add(item)

    for module in (names, layout):
        for key, value in vars(module).items():
            if key.isupper():
                add(value)
    # Specific words only: "v1" or "cpt" mean many things; any job file is called job.yaml in the examples.
    return {w for w in words if len(w) >= 6 and any(c in w for c in "/._")} - {names.SPEC_KEY}


def _policed_strings(path: Path) -> Iterable[tuple[int, str]]:
    """String constants of `path` except docstrings (prose) and `Literal[...]` values (which cannot be names)."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for statement in body if isinstance(body, list) else []:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                skip.add(id(statement.value))
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
            skip |= {id(sub) for sub in ast.walk(node.slice)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def contract_copies(paths: Iterable[Path]) -> list[str]:
    """`file:line: 'word'` for each policed string that contains a contract word (the most specific one)."""
    words = _contract_words()
    home = ROOT / "core" / "cpt_core" / "contract"
    found = []
    for path in paths:
        if home in path.parents:
            continue
        for line, text in _policed_strings(path):
            hits = {word for word in words if word in text}
            for word in sorted(w for w in hits if not any(w != other and w in other for other in hits)):
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                found.append(f"{where}:{line}: {word!r}")
    return found


def test_no_contract_word_is_written_out_twice() -> None:
    words = _contract_words()
    assert {names.JOB_LABEL, names.CACHE_DIR_ENV, layout.STOP, layout.PROGRESS, names.HOOKS_ENV} <= words
    # devkit/ and tests/ are not policed: they play the other side (KubeRay, Kubernetes, the S3 client, a user)
    # and write its words out, so a wrong name in the contract shows up as a failure instead of agreeing with itself.
    assert contract_copies(all_sources()) == [], "use the names of cpt_core.contract (names, layout) instead"


def test_the_word_rule_catches_a_copy(tmp_path: Path) -> None:
    bad = tmp_path / "pkg" / "room" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        '"""Docstrings may say _status/progress.json."""\nLABEL = "cpt.dev/job"\nPATH = f"{x}/_status/stop.json"\n'
    )
    assert [c.split(": ", 1)[1] for c in contract_copies([bad])] == ["'cpt.dev/job'", "'_status/stop.json'"]


def test_the_literal_types_are_the_contract_names() -> None:
    """`Literal[...]` needs values, not names: the CPTJob's apiVersion and kind equal the contract's."""
    assert get_args(CPTJob.model_fields["api_version"].annotation) == (names.API_VERSION,)
    assert get_args(CPTJob.model_fields["kind"].annotation) == (names.KIND,)


# --------------------------------------------------------------------------- at run time


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_contract_and_cli_load_no_framework() -> None:
    loaded = _loaded_after(
        "from click.testing import CliRunner\n"
        "from cpt_core.cli import main\n"
        "import cpt_core.api.progress, cpt_core.schema.crd, cpt_core.storage.progress, cpt_core.contract.reasons\n"
        "result = CliRunner().invoke(main, ['validate', 'examples/local-tiny.yaml'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0"
    )
    assert loaded & {"torch", "ray", "kopf", "deepspeed", "transformers", "cpt_operator", "cpt_trainer"} == set()


def test_the_operator_loads_without_the_trainer() -> None:
    loaded = _loaded_after(
        "import cpt_operator.controller.handlers, cpt_operator.controller.app, cpt_operator.cli.operator"
    )
    assert "kopf" in loaded
    assert loaded & {"cpt_trainer", "torch", "ray", "deepspeed"} == set()


@pytest.mark.trainer  # imports the trainer in a subprocess
def test_the_trainer_loads_without_the_operator() -> None:
    loaded = _loaded_after("import cpt_trainer.train.trainer, cpt_trainer.launch.driver, cpt_trainer.cli.commands")
    assert "torch" in loaded
    assert loaded & {"cpt_operator", "kopf"} == set()


# --------------------------------------------------------------------------- files


def test_source_files_stay_readable() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in all_sources()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"over {MAX_LINES} lines: is this one concept? {long}"


def _pythons(version: str) -> list[str]:
    found = [shutil.which(f"python{version}")]
    found += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))
    return [c for c in found if c]


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "--version"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


def test_sources_are_python_3_10_syntax() -> None:
    """requires-python says 3.10: the grammar is checked by 3.10 itself (mypy's python_version checks the APIs)."""
    python310 = next((c for c in _pythons("3.10") if _runs(c)), None)
    if python310 is None:
        pytest.skip("python3.10 is not installed here; `make lint` (mypy --python-version 3.10) still checks the APIs")
    files = [str(p) for p in all_sources()] + [str(p) for p in (ROOT / "devkit").glob("*.py")]
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, 'exec')"
    result = subprocess.run([python310, "-c", code, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
