"""The storage layer against a real S3 server (SeaweedFS) and the local filesystem."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cpt_core.api.v1alpha1 import StorageSpec
from cpt_core.storage import AccessDenied, NotFound, S3Settings, Storage, Unreachable, parse_uri

from devkit.seaweed import SeaweedS3


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Storage, str]:
    if request.param == "local":
        return Storage(S3Settings()), str(tmp_path / "store") + "/"
    s3: SeaweedS3 = request.getfixturevalue("s3")
    spec = StorageSpec(endpoint=s3.endpoint)
    storage = Storage(S3Settings.from_spec(spec, s3.env()))
    return storage, f"s3://{s3.bucket}/{request.node.name.replace('[', '-').rstrip(']')}/"


def test_write_read_list_delete(root: tuple[Storage, str]) -> None:
    storage, base = root
    storage.write_text(base + "a/one.json", '{"x": 1}')
    storage.write_bytes(base + "a/b/two.bin", b"\x00" * 1000)
    storage.write_text(base + "ab.txt", "not below a/")
    assert storage.read_text(base + "a/one.json") == '{"x": 1}'
    listed = storage.list_objects(base + "a/")
    # Sorted by key, the same on both backends.
    assert [o.uri.rsplit("/", 2)[-2:] for o in listed] == [["b", "two.bin"], ["a", "one.json"]]
    assert listed[0].size == 1000 and listed[0].etag
    # A prefix without a trailing slash matches the directory, not its siblings.
    assert len(storage.list_objects(base + "a")) == 2
    assert storage.list_dirs(base) == ["a"]
    assert storage.exists(base + "a/one.json") and not storage.exists(base + "a/missing.json")
    with pytest.raises(NotFound):
        storage.read_bytes(base + "a/missing.json")
    assert storage.delete_prefix(base + "a/") == 2
    assert storage.list_objects(base + "a/") == []
    assert storage.list_dirs(base) == []  # no empty "directory" is left behind


def test_atomic_write_never_shows_a_partial_object(root: tuple[Storage, str]) -> None:
    storage, base = root
    uri = base + "_status/progress.json"
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000
    storage.write_bytes(uri, big_a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = storage.read_bytes(uri)
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(10):
        storage.write_bytes(uri, big_b if i % 2 == 0 else big_a)
    stop.set()
    thread.join()
    assert seen <= {b"aa2000000", b"bb2000000"}


def test_upload_and_download_directories(root: tuple[Storage, str], tmp_path: Path) -> None:
    storage, base = root
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        (src / ("sub" if i % 2 else "") / f"f{i}.bin").write_bytes(bytes([i]) * (i * 1000 + 1))
    sent = storage.upload_dir(src, base + "ckpt/")
    dst = tmp_path / "dst"
    got = storage.download_dir(base + "ckpt/", dst)
    assert sent == got
    for path in src.rglob("*.bin"):
        assert (dst / path.relative_to(src)).read_bytes() == path.read_bytes()


def test_wrong_credentials_are_access_denied_with_a_fix(s3: SeaweedS3) -> None:
    storage = Storage(
        S3Settings(endpoint=s3.endpoint, access_key_id="AKWRONG", secret_access_key="nope", max_attempts=1)
    )
    with pytest.raises(AccessDenied) as info:
        storage.list_objects(f"s3://{s3.bucket}/")
    assert "credentialsSecret" in str(info.value)
    assert "nope" not in str(info.value)


def test_missing_bucket_is_reported(s3: SeaweedS3) -> None:
    storage = Storage(S3Settings.from_spec(StorageSpec(endpoint=s3.endpoint), s3.env()))
    with pytest.raises(NotFound) as info:
        storage.check_bucket("s3://no-such-bucket/x")
    assert "no-such-bucket" in str(info.value)


def test_unreachable_endpoint_is_reported() -> None:
    storage = Storage(
        S3Settings(
            endpoint="http://127.0.0.1:9", access_key_id="a", secret_access_key="b", max_attempts=1, connect_timeout=1
        )
    )
    with pytest.raises(Unreachable) as info:
        storage.list_objects("s3://bucket/x/")
    assert "cannot reach S3 endpoint http://127.0.0.1:9" in str(info.value)


def test_settings_never_show_secrets() -> None:
    settings = S3Settings.from_spec(None, {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert settings.access_key_id == "AKID"
    assert "s3cr3t" not in repr(settings) and "AKID" not in repr(settings)


def test_parse_uri_forms(tmp_path: Path) -> None:
    assert parse_uri("s3://b/k/x") == parse_uri("s3://b/k/x")
    loc = parse_uri("s3://bucket/a/b/")
    assert (loc.bucket, loc.key, str(loc.join("c.json"))) == ("bucket", "a/b/", "s3://bucket/a/b/c.json")
    assert parse_uri("data/x/", base_dir=tmp_path).key == str(tmp_path / "data" / "x") + "/"
    assert parse_uri(f"file://{tmp_path}/y").path == tmp_path / "y"
    with pytest.raises(ValueError, match="unsupported scheme"):
        parse_uri("gs://bucket/x")
