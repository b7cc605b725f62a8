"""cpt_core: the contract that the operator and the trainer share.

Layers, arrows one way::

    cpt_operator (kopf control plane) ──► cpt_core ◄── cpt_trainer (Ray Train + DeepSpeed data plane)

`cpt_core.api` holds the CPTJob API (typed models, CRD and doc generation, validation) and the
progress file contract, `cpt_core.reasons` the vocabulary of condition types and reasons,
`cpt_core.storage` the storage layer, `cpt_core.cli` the `cpt` command, which composes the
operator's and the trainer's subcommands lazily. Nothing here imports torch, Ray or kopf, so
each image installs only its own side; `tests/unit/test_layers.py` keeps it so.
"""

__version__ = "0.1.0"
