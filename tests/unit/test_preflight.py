"""Preflight decisions that need no server (the S3 checks run against SeaweedFS in test_operator.py)."""

from __future__ import annotations

import pytest
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


def test_a_secret_without_keys_never_lends_the_processs_own_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose Secret has no access key gets unsigned requests, not the operator's (or a `cpt logs` caller's)
    own AWS credentials from botocore's chain."""
    from botocore import UNSIGNED
    from cpt_operator.controller.io.clients import storage_for
    from cpt_operator.controller.settings import OperatorSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOROWNKEY00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-operator-s-own-secret")
    spec = job(storage={"credentialsSecret": "s3", "endpoint": "http://minio.example.com:9000"}).spec.storage
    for secret in ({}, {"AWS_SESSION_TOKEN": "t"}, None):
        storage = storage_for(spec, secret, OperatorSettings())
        assert storage.settings.anonymous, secret
        assert storage.s3.meta.config.signature_version is UNSIGNED
    signed = storage_for(
        spec, {"AWS_ACCESS_KEY_ID": "AKIAJOBSOWNKEY000000", "AWS_SECRET_ACCESS_KEY": "x"}, OperatorSettings()
    )
    assert not signed.settings.anonymous
    assert signed.s3._request_signer._credentials.access_key == "AKIAJOBSOWNKEY000000"
