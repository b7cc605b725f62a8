"""The trainer's `cpt` commands: prepare, synthesize, run, train.

Composed lazily by `cpt_core.cli`: the click `commands` (prepare,
synthesize, run, train), what `cpt run` and `cpt train` do around the driver (`run`), and what they print
(`console`).
"""
