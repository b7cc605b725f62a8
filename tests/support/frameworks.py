"""Which tests need the trainer's frameworks (torch, Ray, DeepSpeed, transformers, ...), read from the code.

The contract (cpt_core) and the operator must work without them (`make py310` runs their tests in a
virtualenv that has none). A test needs them when its module imports one at module level, or when the
test function or one of its fixtures imports one when it runs; imports of this repository's own modules
are followed (cpt_trainer imports torch, so does tests/support/trainer_runs.py). The code is parsed,
never imported, so a file can be classified where its imports would fail.

What runs in a subprocess (`cpt run`, a benchmark script) and what a function of the trainer imports
only when it is called (load_tokenizer imports transformers) are not followed: such tests carry an
explicit `@pytest.mark.trainer`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# The import names of the trainer's dependencies (pyproject.toml: the trainer, tracking and vllm extras,
# and the dev extra's `datasets`), less huggingface-hub (an operator dependency too) and numpy (installed
# by `make py310` for the tests).
TRAINER_FRAMEWORKS = frozenset(
    {
        "accelerate",
        "datasets",
        "deepspeed",
        "gguf",
        "matplotlib",
        "mlflow",
        "peft",
        "pyarrow",
        "ray",
        "safetensors",
        "tensorboard",
        "tokenizers",
        "torch",
        "transformers",
        "vllm",
        "wandb",
        "zstandard",
    }
)

# Where this repository's top-level packages live (the editable install's package roots, and the
# repository root for devkit/, tests/ and bench/).
_SOURCE_ROOTS = (ROOT / "core", ROOT / "operator", ROOT / "trainer", ROOT)


def _module_file(name: str) -> Path | None:
    """The file of the repository module `name` (a module or a package's __init__.py), None if not ours."""
    parts = name.split(".")
    for root in _SOURCE_ROOTS:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _guards_import_error(node: ast.Try) -> bool:
    """`try: import x / except ImportError:` -- an optional import, not a need."""
    names = {"ImportError", "ModuleNotFoundError"}
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(kind, ast.Name) and kind.id in names for kind in kinds):
            return True
    return False


def _imports(body: Iterable[ast.AST], package: str, into_functions: bool) -> Iterator[str]:
    """The absolute names of the modules `body` imports when it runs (relative imports resolved against
    `package`). Function bodies count only with `into_functions` (a test function's body runs; a module's
    function definitions do not, at import time)."""
    for node in body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            # `from package import name` imports the submodule package.name, if there is one.
            yield from (f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if into_functions:
                yield from _imports(node.body, package, into_functions)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, package, into_functions)
        elif isinstance(node, ast.Try) and _guards_import_error(node):
            yield from _imports([*node.handlers, *node.orelse, *node.finalbody], package, into_functions)
        else:
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, (ast.stmt, ast.excepthandler))]
            yield from _imports(children, package, into_functions)


@functools.cache
def _direct(name: str) -> tuple[str, ...]:
    """What importing the repository module `name` imports at module level (nothing for other modules)."""
    path = _module_file(name)
    if path is None:
        return ()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return tuple(_imports(ast.parse(path.read_text(), str(path)).body, package, into_functions=False))


def _needs(names: Iterable[str]) -> frozenset[str]:
    """The trainer frameworks among `names` and among what importing them imports, transitively."""
    found: set[str] = set()
    pending, seen = list(names), set()
    while pending:
        name = pending.pop()
        if name.split(".")[0] in TRAINER_FRAMEWORKS:
            found.add(name.split(".")[0])
            continue
        # Importing a.b.c runs a/__init__.py, a/b/__init__.py and a/b/c.py.
        parts = name.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if prefix not in seen:
                seen.add(prefix)
                pending.extend(_direct(prefix))
    return frozenset(found)


@functools.cache
def file_needs(path: Path) -> frozenset[str]:
    """The trainer frameworks that importing the test file `path` imports."""
    tree = ast.parse(path.read_text(), str(path))
    return _needs(_imports(tree.body, "", into_functions=False))


@functools.cache
def function_needs(func: Callable[..., Any]) -> frozenset[str]:
    """The trainer frameworks that the function `func` (a test or a fixture) imports when it runs."""
    func = inspect.unwrap(func)
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):  # built-in or generated: nothing to read
        return frozenset()
    package = (getattr(func, "__module__", None) or "").rpartition(".")[0]
    return _needs(_imports(ast.parse(source).body, package, into_functions=True))
