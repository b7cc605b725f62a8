"""cpt_trainer: the data plane (data pipeline, Ray Train + DeepSpeed trainer, evaluation, export)."""
