"""The reason vocabulary: terminal flags decide retry-or-fail, and the docs table comes from it."""

from __future__ import annotations

from cpt_core.contract.reasons import ConditionType, Reason, reasons_table


def test_terminal_reasons_are_the_ones_no_restart_can_fix() -> None:
    assert {r.value for r in Reason if r.terminal} == {
        "NonFiniteLoss",
        "DataError",
        "ModelSourceError",
        "SynthesisFailed",
        "ResumeMismatch",
        "CheckpointOwnedByAnotherJob",
        "InvalidSpec",
        "RefusedByPolicy",
        "CheckpointUnloadable",
        "CacheDamaged",
        "ForgettingDetected",
        "DeadlineExceeded",
        "ValidationFailed",
        "RestartLimitReached",
    }


def test_a_reason_this_version_does_not_know_is_retried() -> None:
    assert Reason.parse("SomethingKubeRayAddsLater") is None
    assert not Reason.is_terminal("SomethingKubeRayAddsLater") and not Reason.is_terminal(None)
    assert Reason.is_terminal("NonFiniteLoss") and Reason.parse("AppFailed") is Reason.AppFailed


def test_members_are_their_wire_strings() -> None:
    for reason in Reason:
        assert reason.value[0].isupper() and " " not in reason.value
        assert str(reason) == reason.value and f"{reason}" == reason.value
        assert reason.description.endswith((".", ")")), reason
    assert [c.value for c in ConditionType] == [c.name for c in ConditionType]


def test_the_docs_table_has_one_row_per_reason() -> None:
    conditions, reasons = reasons_table().split("\n\n")
    assert [row.split("`")[1] for row in conditions.splitlines()[2:]] == [c.value for c in ConditionType]
    assert [row.split("`")[1] for row in reasons.splitlines()[2:]] == [r.value for r in Reason]


def test_interruptions_and_damaged_checkpoints_are_not_terminal() -> None:
    # An interrupted attempt resumes; a damaged checkpoint is skipped (a warning), never the end of the run.
    assert not Reason.is_terminal("Interrupted") and not Reason.is_terminal("CheckpointDamaged")
