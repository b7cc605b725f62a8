"""Experiment tracking: TensorBoard, MLflow, Weights & Biases, and a log line.

Experiment tracking: the run's metrics in TensorBoard (default), MLflow and Weights & Biases, and a
plain progress line in the log every `tracking.logEverySteps` steps.

Rank 0 writes. TensorBoard event files go to `<checkpoint.uri>/tensorboard/`: directly for a local
run directory, otherwise into a local directory that is uploaded whenever a checkpoint is committed
and at the end. A resumed run purges the steps after its checkpoint (`purge_step`), so replayed
steps are not drawn twice; MLflow and W&B runs are resumed by the job's identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cpt_core.api.v1alpha1 import TrackingSpec
from cpt_core.contract import layout
from cpt_core.storage import Location, Storage, UnsafeKey

log = logging.getLogger(__name__)

#: Evaluation row keys (report/metrics.jsonl) -> scalar names.
EVAL_SCALARS = {
    "domainLoss": "eval/domain_loss",
    "generalLoss": "eval/general_loss",
    "instructionLoss": "eval/chat_loss",
    "generalLossIncrease": "eval/general_loss_increase",
    "instructionFollowingDrop": "eval/instruction_following_drop",
}


def eval_scalars(row: dict[str, Any]) -> dict[str, float]:
    out = {name: float(row[key]) for key, name in EVAL_SCALARS.items() if row.get(key) is not None}
    for source, loss in (row.get("perSource") or {}).items():
        out[f"eval/per_source/{source}"] = float(loss)
    if row.get("probes"):
        out["eval/probe_f1"] = float(row["probes"]["f1"])
        out["eval/probe_exact_match"] = float(row["probes"]["exactMatch"])
    if row.get("instructionFollowing"):
        out["eval/instruction_following"] = float(row["instructionFollowing"]["promptAccuracy"])
    return out


class Tracker:
    def __init__(
        self,
        spec: TrackingSpec,
        run: Location,
        storage: Storage,
        *,
        job: str,
        uid: str | None,
        resume_step: int,
        config: dict[str, Any],
        enabled: bool,
    ) -> None:
        self.spec, self.run, self.storage = spec, run, storage
        self.enabled = enabled
        self.writer: Any = None
        self.mlflow: Any = None
        self.wandb: Any = None
        self._local_tb: Path | None = None
        if not enabled:
            return
        identity = hashlib.sha256(f"{job}/{uid or '-'}".encode()).hexdigest()[:16]
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            target = run.join(layout.TENSORBOARD)
            if target.is_s3:
                self._local_tb = Path(tempfile.mkdtemp(prefix="cpt-tb-"))
                try:
                    self.storage.download_dir(target, self._local_tb)  # earlier attempts' files: purge_step applies
                except UnsafeKey as exc:  # tracking never ends a run; nothing was downloaded
                    log.warning("not restoring the TensorBoard files of earlier attempts: %s", exc)
            # A resume replays the steps after its checkpoint: drop what an earlier attempt wrote for them.
            self.writer = SummaryWriter(
                str(self._local_tb or target.path), purge_step=resume_step + 1 if resume_step else None
            )
        if spec.mlflow is not None:
            import mlflow

            mlflow.set_tracking_uri(spec.mlflow.tracking_uri)
            mlflow.set_experiment(spec.mlflow.experiment)
            found = mlflow.search_runs(filter_string=f"tags.`cpt.run` = '{identity}'", output_format="list")
            run_id = found[0].info.run_id if found else None
            self.mlflow = mlflow.start_run(run_id=run_id, run_name=job, tags={"cpt.run": identity, "cpt.job": job})
            if run_id is None:
                mlflow.log_params(_flat(config))
        if spec.wandb is not None:
            import wandb

            wandb_dir = None
            if spec.wandb.mode == "offline" and not run.is_s3:
                wandb_dir = str(run.path / layout.WANDB)
                os.makedirs(wandb_dir, exist_ok=True)
            self.wandb = wandb.init(
                project=spec.wandb.project,
                entity=spec.wandb.entity,
                name=job,
                id=identity,
                resume="allow",
                mode=spec.wandb.mode,
                dir=wandb_dir,
                config=config,
            )

    def log(self, step: int, scalars: dict[str, float], stage: str | None = None) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)
            if stage is not None:
                self.writer.add_text("stage", stage, step)
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics({k.replace("/", "."): v for k, v in scalars.items()}, step=step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def log_train(self, row: dict[str, Any]) -> None:
        scalars = {"train/loss": row["loss"], "train/lr": row["lr"], "train/tokens_per_second": row["tokensPerSecond"]}
        self.log(int(row["step"]), scalars)

    def log_eval(self, row: dict[str, Any]) -> None:
        self.log(int(row["step"]), eval_scalars(row))

    def sync(self) -> None:
        """Make the TensorBoard files visible in the run directory (uploads them when it is on S3)."""
        if self.writer is None:
            return
        self.writer.flush()
        if self._local_tb is not None:
            try:
                self.storage.upload_dir(self._local_tb, self.run.join(layout.TENSORBOARD))
            except Exception as exc:  # tracking never ends a run
                log.warning("could not upload TensorBoard files: %s", exc)

    def close(self) -> None:
        if not self.enabled:
            return
        self.sync()
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run()
        if self.wandb is not None:
            self.wandb.finish()


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = str(value)[:500]
    return dict(list(out.items())[:100])  # MLflow's per-batch limit
