"""cpt_trainer: the data plane -- data pipeline, Ray Train + DeepSpeed trainer, evaluation, export.

Rooms, lowest first: `distributed` (one training process and its collectives), `plan` (stages and LR
schedules), `model` (sources, building, generation), `data` (prepare, shards, the exact mixture, the
loader), `synthesis` (documents -> QA pairs), `checkpoint`, `eval`, `telemetry`, `export`; then `train`
(the loop and its parts, made of the rooms below), `launch` (the driver on Ray Train) and `cli` (the
trainer's `cpt` commands). A room imports only rooms below it; tests/unit/test_layers.py keeps it so.
"""
