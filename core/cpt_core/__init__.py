"""cpt_core: what the operator and the trainer share.

Layers, arrows one way::

    cpt_operator (kopf control plane) ──► cpt_core ◄── cpt_trainer (Ray Train + DeepSpeed data plane)

Rooms: `api` (the CPTJob models, one module per spec section, and the progress file's schema),
`contract` (every word both sides speak: names, run-directory layout, reasons, times), `schema`
(the generated CRD and references), `validation` (one check for every entry point, and the
recommended-practice warnings), `storage` (local paths and S3, and the progress file's I/O) and
`cli` (the `cpt` command, composing the operator's and the trainer's subcommands lazily). Nothing
here imports torch, Ray or kopf, so each image installs only its own side;
`tests/unit/test_layers.py` keeps it so.
"""

__version__ = "0.1.0"
