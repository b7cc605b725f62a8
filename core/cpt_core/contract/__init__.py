"""The contract: every word the operator and the trainer both speak, in one home.

`names` (the API's group/version/kind, labels, the Ray pods' environment and mounts), `layout` (every
path of a run directory), `reasons` (condition types and reasons, with their meaning and terminal flag)
and `clock` (how times are written). The writer and the reader of a word import it from here, as
KubeRay's controllers import `utils/constant.go`; `tests/unit/test_layers.py` fails on a copy of one of
these literals anywhere else. Nothing here imports anything but the standard library.
"""
