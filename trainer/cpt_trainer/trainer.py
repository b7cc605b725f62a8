"""The Trainer: one continued pre-training run on one rank. No Ray in here.

The same class runs under Ray Train (cluster and `cpt run`), under torchrun, or in a single
process (tests, benchmarks): the launcher initialises torch.distributed and passes a
`RunContext`. Everything that moves is stateful and checkpointed -- model, optimizer, LR
schedule position, sampler position, RNG states and the metrics so far -- so a resumed run
continues exactly: the same next sample, the same LR, the same losses.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from cpt_operator.api.progress import (
    PROGRESS_PATH,
    EvalResult,
    ProbeScores,
    Progress,
    SourceProgress,
)
from cpt_operator.api.v1alpha1 import CPTJobSpec, ForgettingAction
from cpt_operator.storage import S3Settings, Storage

from . import faults
from .checkpoint import CheckpointStore, Committed, FencedOut, now
from .data import MicroBatch, PreparedSource, RankLoader, build_sampler, data_accounting
from .engine import batch_geometry, create_engine, deepspeed_config, prepare_deepspeed_runtime
from .evaluate import evaluate, load_probes, score_probes
from .export import export_model
from .model import build_model, check_tokenizer_matches, param_groups, training_dtype
from .schedule import lr_at
from .sources import load_tokenizer

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    reason = "NonFiniteLoss"


@dataclass
class RunContext:
    """Where this rank runs and which attempt it belongs to."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    attempt: int = 1
    job: str = "job"
    uid: str | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Outcome:
    """How the run ended (the same on every rank)."""

    state: str  # succeeded | stopped | failed
    step: int
    reason: str | None = None
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
        on_step: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.spec = spec.resolved()
        self.prepared = prepared
        self.ctx = ctx
        self.on_step = on_step
        self.storage = Storage(settings)
        self.store = CheckpointStore(self.storage, self.spec.checkpoint.uri, ctx.rank, ctx.world)
        self.total_steps = self.spec.total_steps
        self.rows, self.accumulation = batch_geometry(self.spec, ctx.world)
        self.step = 0
        self.tokens = 0
        self.losses: dict[int, float] = {}
        self.metrics: list[dict[str, Any]] = []
        self.baseline: EvalResult | None = None
        self.last_eval: EvalResult | None = None
        self.probes_before: ProbeScores | None = None
        self.probes_after: ProbeScores | None = None
        self.forgetting = False
        self.committed: Committed | None = None
        self.pending_state: dict[str, Any] | None = None
        self.started_at = now()
        self._last_progress = 0.0
        self._step_seconds: float | None = None
        self.engine: Any = None

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        prepare_deepspeed_runtime()
        spec, ctx = self.spec, self.ctx
        if ctx.rank == 0:
            self.store.claim(ctx.job, ctx.uid, ctx.attempt)
        self._barrier()
        resume = self.store.latest_committed()
        device = ctx.device
        dtype = training_dtype(spec.model, device)
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
        tokenizer_source = spec.model.tokenizer or spec.model.source
        self.tokenizer = load_tokenizer(tokenizer_source, self.storage)
        check_tokenizer_matches(model, self.tokenizer)
        model.to(device)
        self.engine = create_engine(
            model, param_groups(model, spec.training.weight_decay), deepspeed_config(spec, ctx.world, dtype)
        )
        self.sampler = build_sampler(self.prepared, spec.training.seed)
        if resume is not None:
            log.info("rank %d: resuming from %s (step %d)", ctx.rank, resume.location, resume.step)
            rank_state = self.store.load(self.engine, resume)
            self.load_state_dict(resume.state, rank_state)
            self.committed = resume
        self.loader = RankLoader(
            self.prepared,
            self.sampler,
            self.storage,
            global_batch_rows=self.rows,
            micro_batch_size=spec.training.micro_batch_size,
            rank=ctx.rank,
            world=ctx.world,
        )
        self.probes = load_probes(self.storage, spec.evaluation.probes) if spec.evaluation.probes else []

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything (besides the engine's shards) needed to continue exactly from here."""
        return {
            "job": self.ctx.job,
            "step": self.step,
            "totalSteps": self.total_steps,
            "tokens": self.tokens,
            "sampler": {**self.sampler.state_dict(), "consumedSamples": self.step * self.rows},
            "losses": {str(k): v for k, v in self.losses.items()},
            "metrics": self.metrics,
            "baseline": self.baseline.model_dump(by_alias=True) if self.baseline else None,
            "lastEval": self.last_eval.model_dump(by_alias=True) if self.last_eval else None,
            "probesBefore": self.probes_before.model_dump(by_alias=True) if self.probes_before else None,
            "forgetting": self.forgetting,
            "startedAt": self.started_at,
        }

    @staticmethod
    def rank_state() -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.tokens = int(state.get("tokens", 0))
        self.sampler.load_state_dict(state["sampler"], allow_changes=self.spec.data.allow_changes_on_resume)
        self.losses = {int(k): float(v) for k, v in state.get("losses", {}).items()}
        self.metrics = list(state.get("metrics", []))
        self.baseline = EvalResult.model_validate(state["baseline"]) if state.get("baseline") else None
        self.last_eval = EvalResult.model_validate(state["lastEval"]) if state.get("lastEval") else None
        if state.get("probesBefore"):
            self.probes_before = ProbeScores.model_validate(state["probesBefore"])
        self.forgetting = bool(state.get("forgetting", False))
        self.started_at = state.get("startedAt", self.started_at)
        if rank_state:
            torch.set_rng_state(rank_state["torch"])
            np.random.set_state(rank_state["numpy"])
            random.setstate(rank_state["python"])
            if "cuda" in rank_state and torch.cuda.is_available():
                torch.cuda.set_rng_state(rank_state["cuda"])

    # -- one step -------------------------------------------------------------------------

    def set_lr(self, step: int) -> float:
        lr = lr_at(step, self.total_steps, self.spec.learning_rate, self.spec.training.schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, batches: Iterator[MicroBatch]) -> tuple[float, float]:
        """One optimizer step (gradient accumulation included). Returns (mean loss, lr)."""
        lr = self.set_lr(self.step)
        device = self.ctx.device
        local = torch.zeros(3, dtype=torch.float64)  # loss sum, micro-batches, non-finite count
        for _ in range(self.accumulation):
            batch = next(batches)
            out = self.engine(
                input_ids=torch.from_numpy(batch.input_ids).to(device),
                labels=torch.from_numpy(batch.labels).to(device),
                position_ids=torch.from_numpy(batch.position_ids).to(device),
            )
            loss = out.loss
            if faults.nan_at(self.step + 1):
                loss = loss * float("nan")
            value = float(loss.detach())
            # Every rank learns of a non-finite loss before anyone steps on it (the ranks must stay in
            # lock-step for the gradient collectives); the weights in memory stay finite, nothing is saved.
            if not self._all(math.isfinite(value)):
                local[2] += 1
                break
            self.engine.backward(loss)
            self.engine.step()
            local[0] += value
            local[1] += 1
        if self.ctx.world > 1:
            dist.all_reduce(local)
        if local[2] > 0:
            raise NonFiniteLoss(
                f"the training loss became NaN/inf at step {self.step + 1}; nothing was saved, the last committed "
                "checkpoint (none yet) is intact. Lower training.learningRate, keep training.gradClip > 0, or check "
                "the data"
            )
        return float(local[0] / max(1.0, float(local[1]))), lr

    # -- checkpoints ----------------------------------------------------------------------

    def _committed_text(self) -> str:
        return f"step {self.committed.step}" if self.committed else "none yet"

    def _barrier(self) -> None:
        if self.ctx.world > 1:
            dist.barrier()

    def _all(self, flag: bool) -> bool:
        if self.ctx.world == 1:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def checkpoint(self) -> None:
        """Save the current step (collective); the upload runs in the background."""
        self.finish_commit()
        if self.committed is not None and self.committed.step == self.step:
            return
        pending = self.store.save(self.engine, self.step, self.rank_state())
        self.pending_state = self.state_dict()
        log.info(
            "rank %d: checkpoint step %d saved locally in %.2fs (training stall)",
            self.ctx.rank,
            self.step,
            pending.save_seconds,
        )

    def poll_commit(self) -> None:
        """Commit the pending checkpoint once every rank finished its upload (one all-reduce)."""
        if self.store.pending is not None and self._all(self.store.upload_done()):
            self.finish_commit()

    def finish_commit(self) -> None:
        """Wait for the pending upload on every rank, then commit it (rank 0) -- collective."""
        if self.store.pending is None:
            return
        upload = self.store.finish_upload()
        self._barrier()
        ok = True
        if self.ctx.rank == 0 and upload is not None and self.pending_state is not None:
            try:
                self.committed = self.store.commit(
                    upload.step, self.pending_state, self.ctx.attempt, self.spec.checkpoint.keep_last
                )
                log.info(
                    "checkpoint step %d committed: %.1f MB uploaded in %.2fs (%.1f MB/s), stall %.2fs",
                    upload.step,
                    upload.bytes / 1e6,
                    upload.seconds,
                    upload.bytes / 1e6 / max(upload.seconds, 1e-9),
                    upload.save_seconds,
                )
            except FencedOut:
                ok = False
        self.store.pending = None
        if not self._all(ok):
            raise FencedOut(f"a newer attempt took over {self.store.run}; attempt {self.ctx.attempt} stops")
        if self.ctx.rank != 0 and upload is not None:
            self.committed = Committed(
                upload.step, self.store.step_location(upload.step), {"attempt": self.ctx.attempt}
            )

    # -- evaluation -----------------------------------------------------------------------

    def run_eval(self) -> EvalResult:
        spec = self.spec
        result = evaluate(
            self.engine.module,
            self.prepared,
            self.storage,
            self.step,
            spec.training.micro_batch_size,
            spec.evaluation.max_batches,
            self.ctx.device,
        )
        self.last_eval = result
        if self.baseline is None:
            self.baseline = result
        increase = self.general_loss_increase()
        if increase is not None and increase > spec.evaluation.forgetting.max_general_loss_increase:
            if not self.forgetting:
                log.warning(
                    "forgetting detected at step %d: general loss %.4f is %.1f %% above its baseline %.4f",
                    self.step,
                    result.general_loss,
                    100 * increase,
                    self.baseline.general_loss,
                )
            self.forgetting = True
        self.metrics.append({"kind": "eval", **result.model_dump(by_alias=True), "generalLossIncrease": increase})
        return result

    def general_loss_increase(self) -> float | None:
        if not (self.baseline and self.last_eval and self.baseline.general_loss and self.last_eval.general_loss):
            return None
        return self.last_eval.general_loss / self.baseline.general_loss - 1.0

    def run_probes(self) -> ProbeScores | None:
        if not self.probes:
            return None
        zero3 = self.spec.deepspeed.zero_stage == 3
        if not zero3 and self.ctx.rank != 0:
            return None
        return score_probes(
            self.engine.module, self.tokenizer, self.probes, self.ctx.device, synced=zero3 and self.ctx.world > 1
        )

    # -- progress -------------------------------------------------------------------------

    def progress(self, state: str, reason: str | None = None, message: str | None = None, **extra: Any) -> Progress:
        seq = self.spec.data.sequence_length
        sampler = getattr(self, "sampler", None)  # absent when set-up failed early
        counts = sampler.counts(self.step * self.rows) if sampler is not None else [0] * len(self.prepared)
        accounting = data_accounting(
            self.prepared, {p.name: int(c) for p, c in zip(self.prepared, counts, strict=True)}
        )
        eta = None
        if self._step_seconds and state == "running":
            eta = int(self._step_seconds * (self.total_steps - self.step))
        recent = [m for m in self.metrics if m.get("kind") == "train"][-1:]
        return Progress(
            job=self.ctx.job,
            attempt=self.ctx.attempt,
            state=state,
            reason=reason,
            message=message,
            step=self.step,
            total_steps=self.total_steps,
            tokens=self.step * self.rows * seq,
            tokens_per_second=recent[0]["tokensPerSecond"] if recent else None,
            loss=recent[0]["loss"] if recent else None,
            lr=recent[0]["lr"] if recent else None,
            eta_seconds=eta,
            baseline=self.baseline,
            evaluation=self.last_eval,
            general_loss_increase=self.general_loss_increase(),
            forgetting_detected=self.forgetting,
            probes_before=self.probes_before,
            probes_after=self.probes_after,
            checkpoint=self.committed.ref() if self.committed and self.ctx.rank == 0 else None,
            data=[SourceProgress.model_validate(a) for a in accounting],
            resumed_with_changes=bool(sampler is not None and sampler.resumed_with_changes),
            started_at=self.started_at,
            updated_at=now(),
            **extra,
        )

    def write_progress(self, state: str = "running", force: bool = False, **kwargs: Any) -> None:
        if self.ctx.rank != 0:
            return
        if not force and time.monotonic() - self._last_progress < 2.0:
            return
        self.store.check_fence(self.ctx.attempt)
        self.storage.write_text(self.store.run.join(PROGRESS_PATH), self.progress(state, **kwargs).to_json())
        self._last_progress = time.monotonic()

    def fail(self, reason: str, message: str) -> None:
        """Record a failure no restart can fix (rank 0 writes it; the operator ends the job)."""
        log.error("%s: %s", reason, message)
        self.write_progress("failed", force=True, reason=reason, message=message)

    # -- the loop -------------------------------------------------------------------------

    def fit(self) -> Outcome:
        """Train to the end (or until stopped); checkpoint, evaluate, export."""
        spec = self.spec
        try:
            if self.step == 0:
                self.run_eval()
                self.probes_before = self.run_probes()
            self.write_progress(force=True)
            batches = self.loader.iterate(self.step, self.total_steps)
            stop_reason: str | None = None
            while self.step < self.total_steps:
                began = time.monotonic()
                loss, lr = self.train_step(batches)
                self.step += 1
                elapsed = time.monotonic() - began
                self._step_seconds = elapsed if self._step_seconds is None else 0.8 * self._step_seconds + 0.2 * elapsed
                self.losses[self.step] = loss
                tokens_per_second = self.rows * spec.data.sequence_length / max(elapsed, 1e-9)
                self.metrics.append(
                    {
                        "kind": "train",
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "tokensPerSecond": tokens_per_second,
                        "time": now(),
                    }
                )
                self.poll_commit()
                if self.step % spec.evaluation.interval_steps == 0 or self.step == self.total_steps:
                    self.run_eval()
                    if self.forgetting and spec.evaluation.forgetting.action == ForgettingAction.stop:
                        stop_reason = "ForgettingDetected"
                if self.step % spec.checkpoint.interval_steps == 0 or self.step == self.total_steps or stop_reason:
                    self.checkpoint()
                self.write_progress(force=self.step == self.total_steps)
                if self.on_step:
                    self.on_step(self)
                faults.after_step(self.step, self.ctx.rank, self.committed.step if self.committed else None)
                if stop_reason:
                    break
            self.finish_commit()
            if stop_reason:
                increase = self.general_loss_increase() or 0.0
                message = (
                    f"general loss rose {100 * increase:.1f} % over its baseline (limit "
                    f"{100 * spec.evaluation.forgetting.max_general_loss_increase:.1f} %); stopped at step {self.step} "
                    f"with checkpoint {self._committed_text()}. Add replay data, lower the learning rate, or raise "
                    "evaluation.forgetting.maxGeneralLossIncrease"
                )
                self.write_progress("stopped", force=True, reason=stop_reason, message=message)
                return Outcome("stopped", self.step, stop_reason, message, losses=self.losses)
            self.probes_after = self.run_probes()
            summary = self.summary()
            target = self.store.run.join("final/")
            model_uri = None
            if spec.checkpoint.export.enabled:
                model_uri = export_model(self.engine, spec, self.tokenizer, self.storage, target, self.ctx.job, summary)
            if self.ctx.rank == 0:
                from .report import write_report

                report_uri = write_report(self.storage, self.store.run.join("report/"), self.metrics, summary)
                self.write_progress("succeeded", force=True, model_uri=model_uri, report_uri=report_uri)
            self._barrier()
            return Outcome("succeeded", self.step, model_uri=model_uri or str(target), losses=self.losses)
        except NonFiniteLoss as exc:
            # A checkpoint still uploading was taken before the bad step: commit it. Nothing new is saved.
            self.finish_commit()
            message = str(exc).replace("(none yet)", f"({self._committed_text()})")
            self.write_progress("failed", force=True, reason=NonFiniteLoss.reason, message=message)
            return Outcome("failed", self.step, NonFiniteLoss.reason, message, losses=self.losses)
        except FencedOut as exc:
            log.error("%s", exc)
            return Outcome("failed", self.step, FencedOut.reason, str(exc), losses=self.losses)

    def summary(self) -> dict[str, Any]:
        base, last = self.baseline, self.last_eval

        def fmt(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        out: dict[str, Any] = {
            "steps": self.step,
            "tokens": self.step * self.rows * self.spec.data.sequence_length,
            "domainLossBefore": fmt(base.domain_loss if base else None),
            "domainLossAfter": fmt(last.domain_loss if last else None),
            "generalLossBefore": fmt(base.general_loss if base else None),
            "generalLossAfter": fmt(last.general_loss if last else None),
            "generalLossIncrease": fmt(self.general_loss_increase()),
        }
        if self.probes_before:
            out["probeF1Before"] = fmt(self.probes_before.f1)
        if self.probes_after:
            out["probeF1After"] = fmt(self.probes_after.f1)
        return {k: v for k, v in out.items() if v is not None}
