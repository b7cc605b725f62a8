"""Preflight decisions that need no server (the S3 checks run against SeaweedFS in test_operator.py)."""

from __future__ import annotations

from cpt_operator.controller.preflight.storage import check_secret, check_storage

from devkit.jobs import tiny_job


def job(**spec: object):
    return tiny_job(metadata={"name": "j", "namespace": "ml"}, spec=spec)


def test_no_secret_referenced_is_fine() -> None:
    assert check_secret(job(), None) is None


def test_missing_secret_names_the_fix() -> None:
    result = check_secret(job(storage={"credentialsSecret": "s3"}), None)
    assert result is not None and result.reason == "SecretNotFound"
    assert "kubectl -n ml create secret generic s3" in result.message


def test_secret_without_keys_names_them() -> None:
    result = check_secret(job(storage={"credentialsSecret": "s3"}), {"AWS_ACCESS_KEY_ID": "x"})
    assert result is not None and "AWS_SECRET_ACCESS_KEY" in result.message
    assert (
        check_secret(job(storage={"credentialsSecret": "s3"}), {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
        is None
    )


def test_a_local_checkpoint_uri_cannot_run_on_a_cluster() -> None:
    result = check_storage(job(checkpoint={"uri": "/data/runs/x/"}), None)
    assert not result.ok and result.reason == "CheckpointNotOnObjectStorage" and "cpt run" in result.message
