"""Stored names as local paths (cpt_core.storage.keys): what `safe_join` refuses, and that a download
through it writes nothing outside its directory, also through a symbolic link (local storage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cpt_core.storage import Storage, UnsafeKey, safe_join
from cpt_core.storage.keys import key_problem

REFUSED = {
    "../escaped": "'..' segment",
    "a/../../escaped": "'..' segment",
    "a/..": "'..' segment",
    "/etc/escaped": "starts with '/'",
    "a//b": "empty segment",
    "a/./b": "'.' segment",
    "": "empty",
    "a\x00b": "NUL",
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_names_that_leave_or_blur_their_directory_are_refused_naming_the_key(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafeKey) as raised:
        safe_join(tmp_path, name, f"s3://bucket/model/{name}")
    message = str(raised.value)
    assert message.startswith(f"s3://bucket/model/{name}: refused") and REFUSED[name] in message
    assert raised.value.key == f"s3://bucket/model/{name}"


def test_ordinary_names_are_joined_and_resolved(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "ckpt/zero_pp_rank_0_mp_rank_00_optim_states.pt") == (
        tmp_path.resolve() / "ckpt" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    assert key_problem("a..b/...c/.hidden") is None  # dots inside a name are ordinary characters


def test_a_symbolic_link_inside_the_directory_does_not_lead_a_download_out(tmp_path: Path) -> None:
    outside, target, source = tmp_path / "outside", tmp_path / "target", tmp_path / "source"
    outside.mkdir()
    target.mkdir()
    (target / "sub").symlink_to(outside)
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "escaped.txt").write_text("through the link")
    with pytest.raises(UnsafeKey, match=r"sub/escaped\.txt: refused.*resolves outside the directory"):
        Storage().download_dir(str(source) + "/", target)
    assert list(outside.iterdir()) == []
