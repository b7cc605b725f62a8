"""The Trainer: one continued pre-training run on one rank, made of parts. No Ray in here.

The same class runs under Ray Train (cluster and `cpt run`), under torchrun, or in a single
process (tests, benchmarks): the launcher initialises torch.distributed and passes a
`RunContext`. The parts each own their state, and every part that moves is checkpointed, so a
resumed run continues exactly -- the same next sample, the same LR, the same losses:

- `TrainState`   step, per-step losses, metrics history            (trainer_state.json "train")
- `DataFeed`     mixture segments (stages, adaptive changes), loader (trainer_state.json "data")
- `Evaluator`    holdout losses, probes, instruction following, the forgetting watch ("evaluation")
- `StageLog`     each stage's phase, times and final evaluation     (trainer_state.json "stages")
- `RNGState`     this rank's random generators                      (rank_state_*.pt "rng")
- `Regularizer`  the optional penalty's anchor (and Fisher)         (shared_state.pt "regularization")
- `Checkpointer` save / commit / restore of all of the above with the DeepSpeed shards
- `ProgressReporter` the progress file; `TrainStep` one optimizer step on the engine
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cpt_core.api.progress import State, TrainingProgress
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.api.v1alpha1.status import DataStatus, OutputStatus
from cpt_core.contract import layout
from cpt_core.contract.reasons import Reason
from cpt_core.storage import S3Settings, Storage

from cpt_trainer.checkpoint.checkpointer import Checkpointer, Stateful
from cpt_trainer.checkpoint.resume import find_resume_point
from cpt_trainer.checkpoint.store import CheckpointStore, FencedOut
from cpt_trainer.data import PreparedSource, data_accounting
from cpt_trainer.data.feed import DataFeed, replay_share, with_replay_share
from cpt_trainer.distributed import RunContext
from cpt_trainer.eval.evaluator import Evaluator
from cpt_trainer.export.huggingface import export_model
from cpt_trainer.model.build import build_model, check_tokenizer_matches, param_groups, training_dtype
from cpt_trainer.model.source import load_tokenizer
from cpt_trainer.plan.stages import Stage, StageLog, plan
from cpt_trainer.telemetry.progress import ProgressReporter
from cpt_trainer.telemetry.report import run_report
from cpt_trainer.telemetry.tracking import Tracker
from cpt_trainer.train.engine import batch_geometry, create_engine, deepspeed_config, prepare_deepspeed_runtime
from cpt_trainer.train.hooks import TrainerHooks
from cpt_trainer.train.interrupt import Interrupted, StopSignal
from cpt_trainer.train.regularization import Regularizer, fisher_batches
from cpt_trainer.train.state import RNGState, TrainState
from cpt_trainer.train.step import NonFiniteLoss, TrainStep, reset_optimizer, set_weight_decay

log = logging.getLogger(__name__)

__all__ = ["Outcome", "Trainer"]


@dataclass
class Outcome:
    """How the run ended (the same on every rank)."""

    state: str  # succeeded | stopped | failed | interrupted
    step: int
    reason: Reason | None = None
    message: str | None = None
    model_uri: str | None = None
    losses: dict[int, float] = field(default_factory=dict)


class Trainer:
    """Continued pre-training of one model on one rank."""

    def __init__(
        self,
        spec: CPTJobSpec,
        prepared: list[PreparedSource],
        settings: S3Settings,
        ctx: RunContext,
        hooks: Sequence[TrainerHooks] = (),
    ) -> None:
        self.spec = spec.resolved()
        self.prepared = prepared
        self.ctx = ctx
        self.hooks = list(hooks)
        self.storage = Storage(settings)
        self.stages = plan(self.spec)
        self.total_steps = self.stages[-1].end
        self.rows, self.accumulation = batch_geometry(self.spec, ctx.world)
        self.state = TrainState()
        self.stop_signal = StopSignal()  # SIGINT/SIGTERM, via the driver's stop request (interrupt.py)
        self.store = CheckpointStore(self.storage, self.spec.checkpoint.uri, ctx.rank, ctx.world)
        self.reporter = ProgressReporter(
            self.storage,
            self.spec.checkpoint.uri,
            job=ctx.job,
            uid=ctx.uid,
            attempt=ctx.attempt,
            fence=lambda: self.store.check_fence(ctx.attempt),
            enabled=ctx.leader,
        )
        self.stage_log = StageLog(self.stages)
        self.data = DataFeed(
            prepared,
            self.storage,
            self.stages,
            seed=self.spec.training.seed,
            global_batch_rows=self.rows,
            micro_batch_size=self.spec.training.micro_batch_size,
            rank=ctx.rank,
            world=ctx.world,
            allow_changes=self.spec.data.allow_changes_on_resume,
        )

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        """Claim the run directory, build model and engine, and restore the newest committed checkpoint."""
        spec, ctx = self.spec, self.ctx
        prepare_deepspeed_runtime()
        if ctx.leader:
            self.store.claim(ctx.job, ctx.uid, ctx.attempt)
        ctx.barrier()
        # The newest checkpoint every rank verified (damaged ones are skipped and moved aside).
        resume, skipped = find_resume_point(self.store, ctx)
        dtype = training_dtype(spec.model, ctx.device)
        # Init-from and resume are separate paths: a resumed run reads no starting weights.
        model, _ = build_model(
            spec.model,
            spec.training,
            self.storage,
            dtype,
            spec.data.sequence_length,
            load_weights=resume is None,
            seed=spec.training.seed,
        )
        self.tokenizer = load_tokenizer(spec.model.tokenizer or spec.model.source, self.storage)
        check_tokenizer_matches(model, self.tokenizer)
        model.to(ctx.device)
        self.engine = create_engine(
            model, param_groups(model, spec.training.weight_decay), deepspeed_config(spec, ctx.world, dtype)
        )
        zero3 = spec.deepspeed.zero_stage == 3
        self.evaluator = Evaluator(
            spec, self.prepared, self.storage, ctx, self.tokenizer, synced=zero3 and ctx.world > 1
        )
        regularization = spec.training.regularization
        self.regularizer = Regularizer(regularization, self.engine.module) if regularization else None
        self.train_step = TrainStep(
            self.engine,
            ctx,
            self.accumulation,
            stop_signal=lambda: self.stop_signal.requested,
            view=self,
            hooks=self.hooks,
            regularizer=self.regularizer,
        )
        shared: dict[str, Stateful] = {"regularization": self.regularizer} if self.regularizer else {}
        self.checkpointer = Checkpointer(
            self.store,
            ctx,
            spec.checkpoint.keep_last,
            parts={"train": self.state, "data": self.data, "evaluation": self.evaluator, "stages": self.stage_log},
            rank_parts={"rng": RNGState()},
            shared_parts=shared,
        )
        self.checkpointer.skipped = skipped
        if resume is not None:
            self.checkpointer.restore(self.engine, resume)
        self.data.enter(self.stage_at(self.state.step), self.state.step)
        self.tracker = Tracker(
            spec.tracking,
            self.store.run,
            self.storage,
            job=ctx.job,
            uid=ctx.uid,
            resume_step=self.state.step,
            config=spec.wire(),
            enabled=ctx.leader,
        )

    def stage_at(self, step: int) -> Stage:
        return next((s for s in self.stages if s.contains(step)), self.stages[-1])

    @property
    def step(self) -> int:
        return self.state.step

    # -- the loop -------------------------------------------------------------------------

    def fit(self) -> Outcome:
        """Train every remaining stage (or until the forgetting watch stops it), then export."""
        if self.ctx.leader:
            self.stop_signal.watch(self.storage, self.spec.checkpoint.uri, self.ctx.attempt)
        try:
            if self.state.step == 0:
                self.evaluate()  # the baseline every later evaluation is compared with
            self.report(force=True)
            for stage in self.stages:
                if self.state.step < stage.end and self.train_stage(stage):
                    return self.stop(stage)
            return self.finish()
        except NonFiniteLoss as exc:
            # A checkpoint still uploading was taken before the bad step: commit it. Nothing new is saved.
            self.checkpointer.finish()
            return self.fail(Reason.NonFiniteLoss, str(exc).replace("(none yet)", f"({self.checkpointer.describe()})"))
        except FencedOut as exc:
            log.error("%s", exc)
            return Outcome("failed", self.state.step, Reason.FencedOut, str(exc), losses=self.state.losses)
        except Interrupted as exc:
            return self.interrupted(exc.signal_name)
        except Exception:
            self.partial_report("failed")  # the curves up to the crash, for whoever reads why it failed
            raise
        finally:
            self.stop_signal.close()

    def train_stage(self, stage: Stage) -> bool:
        """Train `stage` from the current step to its end; True when the forgetting watch stopped it."""
        self.begin_stage(stage)
        batches = self.data.batches(self.state.step)
        checkpoint_interval = self.spec.checkpoint.interval_steps
        while self.state.step < stage.end:
            began = time.monotonic()
            lr = stage.lr_at(self.state.step)
            loss = self.train_step(batches, self.state.step + 1, lr)
            tokens = self.rows * self.spec.data.sequence_length
            self.state.record_step(loss, lr, time.monotonic() - began, tokens, stage.name)
            step, stage_done = self.state.step, self.state.step == stage.end
            self.track_step()
            self.checkpointer.poll()
            if self.evaluator.due(step, stage.end):
                self.evaluate()
                if self.adapt_mixture(stage):
                    batches.close()  # prefetched batches belong to the old mixture
                    batches = self.data.batches(step)
            if stage_done:
                self.stage_log.finished(stage, self.evaluator.latest)
            stop = self.evaluator.watch.should_stop
            if step % checkpoint_interval == 0 or stage_done or stop:
                self.checkpointer.save(self.engine, step)
                self.tracker.sync()
            self.report(force=stage_done)
            for hook in self.hooks:
                hook.after_step(self)
            if self.train_step.stop_requested:
                raise Interrupted(self.train_step.stop_requested)
            if stop:
                return True
        return False

    def begin_stage(self, stage: Stage) -> None:
        """Enter `stage` (also when resuming inside it): its mixture and weight decay; at its first step,
        fresh optimizer moments (resetOptimizer) and the regularisation anchor."""
        step = self.state.step
        self.data.enter(stage, step)
        set_weight_decay(self.engine, stage.weight_decay)
        at_start = step == stage.start
        if at_start and stage.reset_optimizer:
            reset_optimizer(self.engine)
        if self.stage_log.started(stage) and len(self.stages) > 1:
            log.info("stage %s (%d/%d) starts at step %d", stage.name, stage.index + 1, len(self.stages), step)
            self.tracker.log(step, {}, stage=stage.name)
        if self.regularizer is not None and (at_start or self.regularizer.anchor is None):
            replay = [p for p in self.prepared if p.role == "replay"]
            batches = fisher_batches(
                replay, self.storage, self.spec.training.micro_batch_size, self.regularizer, self.ctx
            )
            self.regularizer.start(stage.name, self.engine.module, batches)

    def adapt_mixture(self, stage: Stage) -> bool:
        """`forgetting.action: adapt`: move the replay share one step (up on forgetting, down on recovery)."""
        decision = self.evaluator.replay_decision()
        current = self.data.replay_share
        if decision is None or current is None:
            return False
        policy = self.spec.evaluation.forgetting
        base = replay_share(stage.weights, self.data.roles)
        if decision == "raise":
            target = min(max(policy.max_replay_share, base), current + policy.adapt_step)
        else:
            target = max(base, current - policy.adapt_step)
        if abs(target - current) < 1e-3:
            return False
        weights = with_replay_share(stage.weights, self.data.roles, target)
        watch = self.evaluator.watch
        reason = (
            f"forgetting: {watch.describe(self.evaluator.baseline, self.evaluator.latest)}"
            if decision == "raise"
            else "recovered: every forgetting signal under half its limit"
        )
        self.data.change_mixture(self.state.step, weights, reason)
        log.warning(
            "step %d: replay share %.1f %% -> %.1f %% (%s)", self.state.step, 100 * current, 100 * target, reason
        )
        return True

    def evaluate(self) -> None:
        self.evaluator.run(self.engine.module, self.state.step)
        row = self.evaluator.row()
        self.state.record_eval(row)
        self.tracker.log_eval(row)

    def track_step(self) -> None:
        """The step's scalars to the trackers, and every `tracking.logEverySteps` a line in the log."""
        row = self.state.latest_train()
        assert row is not None
        self.tracker.log_train(row)
        every = self.spec.tracking.log_every_steps
        if self.ctx.leader and (row["step"] % every == 0 or row["step"] == self.total_steps):
            log.info(
                "step %d/%d (%s) loss %.4f lr %.3g %.0f tokens/s",
                row["step"],
                self.total_steps,
                row["stage"],
                row["loss"],
                row["lr"],
                row["tokensPerSecond"],
            )

    # -- endings --------------------------------------------------------------------------

    def finish(self) -> Outcome:
        """Commit, score probes, export the model and write the report."""
        self.checkpointer.finish()
        summary = {**self.training_summary(), **self.evaluator.summary()}
        target = self.store.run.join(layout.FINAL)
        model_uri = None
        if self.spec.checkpoint.export.enabled:
            model_uri = export_model(
                self.engine, self.spec, self.tokenizer, self.storage, target, self.ctx.job, summary
            )
        if self.ctx.leader:
            report_uri = self.write_report("succeeded", summary)
            self.report("succeeded", force=True, output=OutputStatus(model_uri=model_uri, report_uri=report_uri))
        self.tracker.close()
        self.ctx.barrier()
        return Outcome("succeeded", self.state.step, model_uri=model_uri or str(target), losses=self.state.losses)

    def stop(self, stage: Stage) -> Outcome:
        """The forgetting watch stopped training: the checkpoint of this step is committed."""
        self.checkpointer.finish()
        self.stage_log.stopped(stage)
        watch = self.evaluator.watch
        message = (
            f"forgetting in stage {stage.name}: {watch.describe(self.evaluator.baseline, self.evaluator.latest)}; "
            f"stopped at step {self.state.step} with checkpoint {self.checkpointer.describe()}. Add replay data, "
            "lower the learning rate, use forgetting.action: adapt, or raise the limits in evaluation.forgetting"
        )
        output = self.partial_report("stopped")
        self.report("stopped", reason=Reason.ForgettingDetected, message=message, force=True, output=output)
        self.tracker.close()
        return Outcome("stopped", self.state.step, Reason.ForgettingDetected, message, losses=self.state.losses)

    def interrupted(self, signal_name: str) -> Outcome:
        """SIGINT/SIGTERM: commit this step when the grace period allows, record `interrupted`, end cleanly."""
        step = self.state.step
        if self.checkpointer.fits_in(self.spec.checkpoint.interrupt_grace_seconds):
            self.checkpointer.save(self.engine, step)
        self.checkpointer.finish()
        message = f"interrupted by {signal_name} after step {step}; the next run resumes from " + (
            f"the checkpoint of {self.checkpointer.describe()} ({self.checkpointer.committed.location})"
            if self.checkpointer.committed
            else "the start (no checkpoint was committed yet)"
        )
        log.warning("%s", message)
        output = self.partial_report("interrupted")
        self.report("interrupted", reason=Reason.Interrupted, message=message, force=True, output=output)
        self.tracker.close()
        return Outcome("interrupted", step, Reason.Interrupted, message, losses=self.state.losses)

    def fail(self, reason: Reason, message: str) -> Outcome:
        """Record a failure no restart can fix (rank 0 writes it; the operator ends the job)."""
        log.error("%s: %s", reason.value, message)
        self.report("failed", reason=reason, message=message, force=True, output=self.partial_report("failed"))
        self.tracker.close()
        return Outcome("failed", self.state.step, reason, message, losses=self.state.losses)

    # -- progress -------------------------------------------------------------------------

    def report(
        self,
        state: State = "running",
        *,
        reason: Reason | None = None,
        message: str | None = None,
        output: OutputStatus | None = None,
        force: bool = False,
    ) -> None:
        """Write the progress file (rank 0; routine writes are throttled)."""
        if not self.ctx.leader:
            return
        latest = self.state.latest_train()
        eta = None
        if self.state.step_seconds and state == "running":
            eta = int(self.state.step_seconds * (self.total_steps - self.state.step))
        progress = TrainingProgress(
            step=self.state.step,
            total_steps=self.total_steps,
            tokens=self.state.step * self.rows * self.spec.data.sequence_length,
            tokens_per_second=latest["tokensPerSecond"] if latest else None,
            loss=latest["loss"] if latest else None,
            lr=latest["lr"] if latest else None,
            eta_seconds=eta,
        )
        data = DataStatus(
            sources=data_accounting(self.prepared, self.data.consumed_rows(self.state.step)),
            resumed_with_changes=self.data.resumed_with_changes,
            replay_share=self.data.replay_share,
            mixture_changes=self.data.mixture_changes(),
        )
        self.reporter.report(
            state,
            reason=reason,
            message=message,
            force=force,
            progress=progress,
            data=data,
            evaluation=self.evaluator.status(),
            checkpoint=self.checkpointer.ref(),
            output=output,
            stage=self.stage_at(min(self.state.step, self.total_steps - 1)).name,
            stages=self.stage_log.status(self.state.step),
        )

    def write_report(self, state: str, summary: dict[str, Any]) -> str:
        """report/: the metrics so far, the loss curves (a line at each stage start) and the summary."""
        stages = [(s.name, s.start) for s in self.stages] if len(self.stages) > 1 else []
        return run_report(self.storage, self.store.run, state, self.state.metrics, summary, stages)

    def partial_report(self, state: str) -> OutputStatus | None:
        """report/ on an ending other than success (stop, interruption, failure), as far as the run got: best
        effort, never raising (the ending itself, not a report failure, is what the operator must see)."""
        if not self.ctx.leader:
            return None
        try:
            return OutputStatus(
                report_uri=self.write_report(state, {**self.training_summary(), **self.evaluator.summary()})
            )
        except Exception as exc:
            log.warning("%s not written after the run %s: %s", layout.REPORT, state, exc)
            return None

    def training_summary(self) -> dict[str, int]:
        return {"steps": self.state.step, "tokens": self.state.step * self.rows * self.spec.data.sequence_length}
