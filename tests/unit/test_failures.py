"""Failure classes: what the training processes raised, classified on the driver.

Permanent errors are reported once with their reason and never retried; everything else is
transient and retried from the last committed checkpoint. Users read one line, never a traceback.
"""

from __future__ import annotations

import pytest
from cpt_core.contract.reasons import Reason
from cpt_trainer.checkpoint.store import CheckpointUnloadable, FencedOut, IdentityMismatch
from cpt_trainer.data import DataError, SamplerStateMismatch
from cpt_trainer.data.shards import CacheDamaged
from cpt_trainer.launch.failures import classify
from cpt_trainer.model.source import ModelSourceError
from cpt_trainer.train.engine import GeometryError
from ray.train import WorkerGroupError

TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nValueError: deep'


def group(**failures: BaseException) -> WorkerGroupError:
    by_rank = {int(k.removeprefix("rank")): v for k, v in failures.items()}
    return WorkerGroupError("Training failed due to worker errors:\n" + TRACEBACK, by_rank)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DataError("source 'a': f.jsonl.zst is damaged or truncated (...)"), Reason.DataError),
        (CacheDamaged("cache entry s3://b/c/ is damaged: ... run again"), Reason.CacheDamaged),
        (ModelSourceError("spec.model.source: cannot load"), Reason.ModelSourceError),
        (SamplerStateMismatch("cannot resume: ..."), Reason.ResumeMismatch),
        (IdentityMismatch("checkpoint.uri ... another job"), Reason.CheckpointOwnedByAnotherJob),
        (GeometryError("does not divide"), Reason.InvalidSpec),
        (CheckpointUnloadable("DeepSpeed cannot load it"), Reason.CheckpointUnloadable),
        (FencedOut("attempt 3 took over"), Reason.FencedOut),
    ],
)
def test_permanent_errors_are_not_retried_and_keep_their_own_message(error: Exception, reason: Reason) -> None:
    failure = classify(group(rank1=error))
    assert (failure.reason, failure.retry, failure.message) == (reason, False, str(error))


def test_a_permanent_error_on_one_rank_wins_over_the_collateral_errors_of_the_others() -> None:
    collateral = RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer\n" + TRACEBACK)
    failure = classify(group(rank0=collateral, rank1=CacheDamaged("cache entry x is damaged")))
    assert failure.reason == Reason.CacheDamaged and not failure.retry


def test_anything_else_is_transient_and_reads_as_one_line() -> None:
    failure = classify(group(rank1=ConnectionError("worker lost\n" + TRACEBACK)))
    assert failure.reason == Reason.TrainingFailed and failure.retry
    assert failure.message == "the training processes failed (rank 1: ConnectionError: worker lost)"
    assert "\n" not in failure.message and "Traceback" not in failure.message
    bare = classify(RuntimeError("controller died\n" + TRACEBACK))
    assert bare.retry and bare.message == "the training processes failed (RuntimeError: controller died)"
