"""`cpt`: the command line of cpt-operator, composed lazily from each side's commands.

`COMMANDS` maps a subcommand to `"module:function"`. A subcommand's module is imported only
when that subcommand runs (help texts are in the table), so `cpt validate` starts in well under
a second, the operator image runs `cpt operator` without torch or Ray, and the trainer image runs
`cpt train` without kopf. The contract's own commands (validate, crd, api-docs) are in `commands`,
what every command shares in `common`, how manifests are read in `inputs`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click

from cpt_core import __version__
from cpt_core.cli.common import examples, fail


@dataclass(frozen=True)
class Entry:
    target: str  # "module:function" of a click command
    help: str  # one line for `cpt --help` (the module is not imported to list it)
    extra: str = ""  # the package extra the command needs
    hidden: bool = False  # internal: run by the operator or `make`, not by users


COMMANDS: dict[str, Entry] = {
    "validate": Entry(
        "cpt_core.cli.commands:validate", "Validate CPTJob manifests (schema, CEL rules, semantic checks)."
    ),
    "synthesize": Entry(
        "cpt_trainer.cli.commands:synthesize",
        "Generate question-answer sources from documents (synthesize).",
        "trainer",
    ),
    "prepare": Entry("cpt_trainer.cli.commands:prepare", "Tokenize, pack and cache the job's data.", "trainer"),
    "run": Entry("cpt_trainer.cli.commands:run", "Run a CPTJob on this machine (embedded Ray).", "trainer"),
    "render": Entry("cpt_operator.cli.operator:render", "Print the ConfigMap and RayJob the operator would create."),
    "operator": Entry(
        "cpt_operator.cli.operator:operator", "Run the operator: reconcile CPTJobs into RayJobs.", "operator"
    ),
    "status": Entry("cpt_operator.cli.jobs:status", "Show a CPTJob on the cluster.", "operator"),
    "logs": Entry("cpt_operator.cli.jobs:logs", "Print the logs of a CPTJob's attempt.", "operator"),
    "suspend": Entry("cpt_operator.cli.jobs:suspend", "Suspend a CPTJob (checkpoints kept).", "operator"),
    "resume": Entry("cpt_operator.cli.jobs:resume", "Resume a suspended CPTJob from its last checkpoint.", "operator"),
    "crd": Entry("cpt_core.cli.commands:crd", "Print the CPTJob CustomResourceDefinition."),
    "train": Entry(
        "cpt_trainer.cli.commands:train", "The RayJob entrypoint (run by the operator).", "trainer", hidden=True
    ),
    "api-docs": Entry("cpt_core.cli.commands:api_docs", "Print the generated references (make docs).", hidden=True),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, _, attribute = entry.target.partition(":")
        try:
            command = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            return _missing(name, entry, exc)
        command.hidden = entry.hidden
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, entry.help) for name, entry in COMMANDS.items() if not entry.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _missing(name: str, entry: Entry, exc: ImportError) -> click.Command:
    """A stand-in that says which extra to install, instead of an ImportError traceback."""

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def missing() -> None:
        fail(f"`cpt {name}` needs the '{entry.extra}' extra: pip install 'cpt-operator[{entry.extra}]' ({exc})")

    return missing


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples(
        "cpt validate examples/                  # check manifests before applying them",
        "cpt run examples/local-tiny.yaml        # train on this machine",
        "cpt render -n ml-team job.yaml          # the RayJob the operator would create",
        "cpt COMMAND --help                      # options and examples of one command",
    ),
)
@click.version_option(__version__, prog_name="cpt")
def main() -> None:
    """Continued pre-training of language models on Kubernetes (and on your laptop)."""
