"""Every path below a run directory (`spec.checkpoint.uri`), relative to it.

The trainer writes these files and the operator, `cpt status`, `cpt logs` and `cpt run` read them
(docs/progress.md; docs/architecture.md, "Storage layout")::

    _status/progress.json   progress, written atomically by rank 0 (the trainer -> operator contract)
    _status/fence.json      the newest attempt: an older one never commits or reports again
    _status/run.json        the job that owns the directory
    _status/stop.json       the driver's stop request (SIGINT/SIGTERM) to the training processes
    step-00000100/          a checkpoint: DeepSpeed shards, rank states, trainer_state.json,
                            MANIFEST.json (every file, size, SHA-256) and COMMITTED, written last
    _damaged/               checkpoints that failed verification, moved aside (never deleted)
    final/                  the exported Hugging Face model; EXPORTING while it is written
    report/                 metrics.jsonl, loss.png, summary.json
    logs/attempt-N/         pod logs of an ended attempt, copied by the operator
    tensorboard/            TensorBoard event files (wandb/: an offline W&B run)
    _ray/                   Ray Train's own state of a local `cpt run`
    _cache/                 the data cache when spec.data.cacheUri is unset
"""

from __future__ import annotations

import re

STATUS_DIR = "_status/"
PROGRESS = f"{STATUS_DIR}progress.json"
FENCE = f"{STATUS_DIR}fence.json"
RUN = f"{STATUS_DIR}run.json"
STOP = f"{STATUS_DIR}stop.json"
#: The operator's preflight writes and deletes `<PREFLIGHT_PROBE><random>` to test write access.
PREFLIGHT_PROBE = f"{STATUS_DIR}preflight-"

# -- checkpoints -----------------------------------------------------------------------------------

STEP_DIR = re.compile(r"^step-(\d{8})$")
COMMITTED = "COMMITTED"
MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
#: Tensors every rank needs whole (the regularisation anchor), written once by rank 0.
SHARED_STATE = "shared_state.pt"
#: The DeepSpeed tag (the sub-directory of a checkpoint with the engine's shards).
ENGINE_TAG = "ckpt"
RANK_STATE = re.compile(r"^rank_state_(\d{5})\.pt$")
RANK_STATE_GLOB = "rank_state_*.pt"
DAMAGED = "_damaged/"


def step_dir(step: int) -> str:
    """`step-00000100/`: the directory of the checkpoint of optimizer step `step`."""
    return f"step-{step:08d}/"


def rank_state(rank: int) -> str:
    """`rank_state_00003.pt`: one rank's own state (its random generators) in a checkpoint."""
    return f"rank_state_{rank:05d}.pt"


# -- results and evidence --------------------------------------------------------------------------

FINAL = "final/"
#: Present in `final/` from before its first file is replaced until after its last one is written.
EXPORTING = "EXPORTING"
#: Written last in `final/`: the export is complete.
EXPORT_RECORD = "cpt_export.json"
REPORT = "report/"
LOGS = "logs/"
TENSORBOARD = "tensorboard/"
WANDB = "wandb/"
#: Ray Train's own run state of `cpt run` (a local run directory only).
RAY_RESULTS = "_ray"
#: The data cache below the run directory when spec.data.cacheUri is unset, and synthesised sources below a cache.
CACHE = "_cache/"
SYNTHETIC = "synthetic/"


def attempt_logs(attempt: int) -> str:
    """`logs/attempt-3/`: where the operator copies the pod logs of an ended attempt."""
    return f"{LOGS}attempt-{attempt}/"


def under(run_uri: str, path: str) -> str:
    """`path` (one of the above) below a run directory: `under("s3://b/run", FINAL)` is `s3://b/run/final/`."""
    return run_uri.rstrip("/") + "/" + path
