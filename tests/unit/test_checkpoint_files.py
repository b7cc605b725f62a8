"""A checkpoint's .pt files are data, never code (cpt_trainer.checkpoint.loading): the rank state saves
as tensors and plain values and restores every generator exactly; a file whose unpickling would call
anything else is refused without being unpickled, naming what it asked for."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cpt_trainer.checkpoint.loading import ALLOWED, UnsafeCheckpointFile, allowed_classes, safe_load
from cpt_trainer.train.state import RNGState

from tests.support.hostile_files import code_running_pt


def draws() -> tuple[list[float], float, list[float], float]:
    return np.random.rand(4).tolist(), random.random(), torch.rand(3).tolist(), float(np.random.randn())


def test_the_rank_state_loads_with_weights_only_and_restores_every_generator(tmp_path: Path) -> None:
    np.random.randn()  # a cached Gaussian, the least obvious part of numpy's state
    random.gauss(0, 1)
    path = tmp_path / "rank_state_00000.pt"
    torch.save({"rng": RNGState().state_dict()}, path)
    expected = draws()
    draws()
    RNGState().load_state_dict(torch.load(path, weights_only=True)["rng"])
    assert draws() == expected


def test_a_file_whose_unpickling_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker, path = tmp_path / "code-ran", tmp_path / "rank_state_00000.pt"
    path.write_bytes(code_running_pt(marker))
    with pytest.raises(UnsafeCheckpointFile, match=r"^rank_state_00000\.pt .*names builtins\.exec") as raised:
        safe_load(path)
    assert "\n" not in str(raised.value)
    assert not marker.exists()


def test_a_rank_state_of_an_older_version_is_refused_naming_numpy(tmp_path: Path) -> None:
    """Written by versions that pickled numpy's state as an array: it never loads with weights_only."""
    path = tmp_path / "rank_state_00000.pt"
    torch.save({"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}, path)
    with pytest.raises(UnsafeCheckpointFile, match=r"names .*numpy"):
        safe_load(path)


def test_the_allowed_classes_are_plain_records_of_deepspeed() -> None:
    classes = allowed_classes()
    assert [f"{c.__module__}.{c.__qualname__}" for c in classes] == list(ALLOWED)
    for cls in classes:  # constructors and fields only: nothing that reduces to a call of its own
        assert cls.__module__.startswith("deepspeed.") and isinstance(cls, type)
        assert "__reduce__" not in vars(cls) and "__setstate__" not in vars(cls), cls


def test_the_loss_scalers_of_fp16_and_bf16_runs_load(tmp_path: Path) -> None:
    """fp16 ZeRO runs (GPUs) save a DynamicLossScaler, the others a static LossScaler, in every optimizer shard."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler

    dynamic = CreateLossScaler(
        torch.half,
        0,
        True,
        {
            "init_scale": 2**16,
            "scale_window": 1000,
            "min_scale": 1,
            "delayed_shift": 2,
            "consecutive_hysteresis": False,
        },
    )
    static = CreateLossScaler(torch.bfloat16, 0, False, None)
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": dynamic, "static": static}}, path)
    loaded = safe_load(path)["optimizer_state_dict"]
    assert type(loaded["loss_scaler"]) is type(dynamic) and vars(loaded["loss_scaler"]) == vars(dynamic)
    assert type(loaded["static"]) is type(static) and vars(loaded["static"]) == vars(static)


def test_model_states_whose_parameter_names_leave_the_conversion_directory_are_refused(tmp_path: Path) -> None:
    """DeepSpeed's universal conversion (a resize) makes a directory per parameter name, joined as it is."""
    from collections import OrderedDict

    from cpt_trainer.checkpoint.resume import _unpickle_problem

    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"param_shapes": [OrderedDict({"model.norm.weight": torch.Size([8])})]}, path)
    assert _unpickle_problem(path) is None
    torch.save({"param_shapes": [OrderedDict({"../../escaped": torch.Size([8])})]}, path)
    assert "names a parameter '../../escaped'" in (_unpickle_problem(path) or "")
