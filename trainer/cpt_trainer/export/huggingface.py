"""Export the trained model as a consolidated Hugging Face model to `<checkpoint.uri>/final/`.

Works from every ZeRO stage: with ZeRO-3 the parameter shards are gathered layer by layer
onto rank 0 (a collective: every rank calls `consolidated_state_dict`). LoRA adapters are
merged into the base weights, so the result loads with plain `AutoModelForCausalLM`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.contract import layout
from cpt_core.storage import Location, Storage

from cpt_trainer.export.card import model_card
from cpt_trainer.model.build import DTYPES

log = logging.getLogger(__name__)


def consolidated_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (None elsewhere). Collective under ZeRO-3."""
    import torch.distributed as dist

    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
        return state if dist.get_rank() == 0 else None
    if dist.get_rank() != 0:
        return None
    return {k: v.detach() for k, v in engine.module.state_dict().items()}


def _base_model_dir(spec: CPTJobSpec, storage: Storage) -> Path | None:
    """The base model's local directory (already in the cache: training loaded it), for its card."""
    from cpt_trainer.model.source import resolve

    try:
        return resolve(spec.model.source, storage).directory
    except Exception:
        return None


def _push(
    out: Path, spec: CPTJobSpec, job: str, summary: dict[str, Any], base_model_dir: Path | None
) -> dict[str, Any]:
    """`export.push`: upload the export in `out` (already copied to `final/`); the outcome for cpt_export.json
    (a failure is not fatal). Unless `includeLocations`, the card uploaded is the one without the run's
    locations; `final/README.md` keeps them."""
    from cpt_trainer.export.push import PushError, push_folder

    push = spec.checkpoint.export.push
    assert push is not None
    if not push.include_locations:
        model_card(spec, job, summary, base_model_dir, locations=False).save(out / "README.md")
    try:
        url = push_folder(out, push, job)
    except PushError as exc:
        log.warning("export: %s; the model in %s is unaffected", exc, layout.FINAL)
        return {"repo": push.repo, "error": str(exc)}
    log.info("export: pushed to %s (%s)", push.repo, url)
    return {"repo": push.repo, "commit": url}


def export_model(
    engine: Any,
    spec: CPTJobSpec,
    tokenizer: Any,
    storage: Storage,
    target: Location,
    job: str,
    summary: dict[str, Any],
) -> str | None:
    """Write the consolidated model (rank 0 uploads). Returns the URI on rank 0."""
    state = consolidated_state_dict(engine, spec.deepspeed.zero_stage)
    if state is None:
        return None
    dtype = DTYPES[spec.checkpoint.export.dtype]
    module = engine.module
    if spec.training.lora is not None:
        module = _merged_lora(module, state)
        state = {k: v for k, v in module.state_dict().items()}
    state = {
        k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = base.config
    config.use_cache = True
    config.dtype = dtype
    with tempfile.TemporaryDirectory(prefix="cpt-export-") as tmp:
        out = Path(tmp)
        base.save_pretrained(out, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out)
        generation = getattr(base, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(out)
        base_model_dir = _base_model_dir(spec, storage)
        model_card(spec, job, summary, base_model_dir).save(out / "README.md")
        # Readers never take a half-written export: EXPORTING is there from before the first file is
        # replaced until after the last one (and cpt_export.json, the completion record) is written.
        storage.delete_prefix(target)
        storage.write_text(target.join(layout.EXPORTING), json.dumps({"job": job}))
        storage.upload_dir(out, target)
        record: dict[str, Any] = {"job": job, "dtype": spec.checkpoint.export.dtype, **summary}
        storage.write_text(target.join(layout.EXPORT_RECORD), json.dumps(record))
        storage.delete(target.join(layout.EXPORTING))
        if spec.checkpoint.export.push is not None:  # after the export is complete: it never waits on the Hub
            record["push"] = _push(out, spec, job, summary, base_model_dir)
            storage.write_text(target.join(layout.EXPORT_RECORD), json.dumps(record))
    return str(target)


def _merged_lora(module: Any, state: dict[str, torch.Tensor]) -> Any:
    """A CPU copy of a peft model with `state` loaded and the adapters merged into the base weights."""
    import copy

    cpu = copy.deepcopy(module).to("cpu")
    cpu.load_state_dict({k: v.to("cpu") for k, v in state.items()}, strict=False)
    return cpu.merge_and_unload()
