"""Run the Trainer in N processes with torch.distributed (gloo), the way torchrun would: for tests of
what depends on the number of training processes (resume with another number of them), without the
~20 s of a Ray Train start-up. Each rank writes what it saw to `<out>/rank-R.json`."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rank_main(
    rank: int, world: int, port: int, spec_json: str, prepared: Any, out: str, options: dict[str, Any]
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch
    import torch.distributed as dist
    from cpt_core.api.v1alpha1 import CPTJobSpec
    from cpt_core.storage import S3Settings
    from cpt_trainer.distributed import RunContext
    from cpt_trainer.train.trainer import Trainer

    from tests.support.faults import Faults

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = RunContext(rank=rank, world=world, local_rank=rank, attempt=options.get("attempt", 1), job="t")
    hooks = [Faults(raise_at_step=options["raise_at_step"])] if options.get("raise_at_step") else []
    trainer = Trainer(CPTJobSpec.model_validate_json(spec_json), prepared, S3Settings(), ctx, hooks=hooks)
    trainer.setup()
    result: dict[str, Any] = {"resumedAt": trainer.step}
    if trainer.data.loader is not None:
        batches = [trainer.data.loader.micro_batch(trainer.step, m) for m in range(trainer.data.loader.accumulation)]
        result["nextIndices"] = sorted(int(i) for b in batches for i in b.indices)
    try:
        outcome = trainer.fit()
        result.update(state=outcome.state, losses={str(k): v for k, v in outcome.losses.items()})
    except Exception as exc:  # the injected fault: what a crash leaves is at most an uncommitted upload
        trainer.checkpointer.finish()
        result.update(state="raised", error=str(exc))
    Path(out, f"rank-{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def run_trainers(spec: Any, prepared: Any, world: int, out: Path, **options: Any) -> list[dict[str, Any]]:
    """Train `spec` with `world` processes; returns each rank's result."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _rank_main,
        args=(world, _free_port(), spec.model_dump_json(by_alias=True), prepared, str(out), options),
        nprocs=world,
        join=True,
    )
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(world)]
