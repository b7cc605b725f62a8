"""Evaluation: domain gain against general forgetting, measured while training.

The trainer's `evaluator` part (when to evaluate, baseline and latest, the status section)
and what it measures -- `holdout` losses per source, knowledge `probes`, `instruction_following` by
verifiable rules -- and the `forgetting` watch that turns the measures into warn, stop or adapt.
"""
