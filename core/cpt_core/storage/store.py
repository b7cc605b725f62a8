"""`Storage`: one interface over `s3://` and local locations.

It lists, reads and writes small objects atomically, moves whole directories in parallel, and
translates every failure into a `StorageError` that says what to fix.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from cpt_core.contract import names
from cpt_core.storage.keys import safe_join
from cpt_core.storage.locations import (
    AccessDenied,
    Location,
    NotFound,
    ObjectInfo,
    S3Settings,
    StorageError,
    TooLarge,
    Unreachable,
    parse_uri,
)

# --------------------------------------------------------------------------- storage


def _token(text: str) -> str:
    """An S3 error code as a bounded word (codes are CamelCase words; anything else is not echoed)."""
    return text if text.isascii() and text.isalnum() and len(text) <= 64 else ""


class Storage:
    """Read, write and list `s3://` and local locations with one interface."""

    def __init__(self, settings: S3Settings | None = None, *, max_workers: int = 16) -> None:
        self.settings = settings or S3Settings.from_spec(None)
        self.max_workers = max_workers
        self._client: Any = None
        self._lock = threading.Lock()

    # -- clients ------------------------------------------------------------------------

    @property
    def s3(self) -> Any:
        """The boto3 S3 client (thread-safe once created; creating one is slow, so there is one)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        options: dict[str, Any] = {}
        if s.anonymous:
            from botocore import UNSIGNED

            options["signature_version"] = UNSIGNED
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=s.endpoint,
            region_name=s.region,
            aws_access_key_id=None if s.anonymous else s.access_key_id,
            aws_secret_access_key=None if s.anonymous else s.secret_access_key,
            aws_session_token=None if s.anonymous else s.session_token,
            config=Config(
                s3={"addressing_style": s.addressing_style},
                retries={"max_attempts": s.max_attempts, "mode": "standard"},
                connect_timeout=s.connect_timeout,
                read_timeout=s.read_timeout,
                max_pool_connections=max(10, self.max_workers),
                **options,
            ),
        )
        if s.hard_deadlines:
            from cpt_core.storage.deadline import track

            track(client)
        return client

    def _translate(self, exc: Exception, loc: Location, action: str) -> StorageError:
        from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, NoCredentialsError

        where = f"{action} {loc}"
        endpoint = self.settings.endpoint or "AWS S3"
        if isinstance(exc, NoCredentialsError):
            return AccessDenied(
                f"{where}: no S3 credentials; set spec.storage.credentialsSecret (cluster) or "
                f"{names.ACCESS_KEY_ID} / {names.SECRET_ACCESS_KEY} (cpt run)"
            )
        if type(exc).__name__ in ("ConnectTimeoutError", "ReadTimeoutError"):
            s = self.settings
            return Unreachable(
                f"{where}: S3 endpoint {endpoint} did not answer within {s.connect_timeout:g} s (connect) / "
                f"{s.read_timeout:g} s (read), {s.max_attempts} attempt(s); check spec.storage.endpoint"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
            return Unreachable(f"{where}: cannot reach S3 endpoint {endpoint} ({exc}); check spec.storage.endpoint")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
                return NotFound(f"{where}: no such object")
            if code == "NoSuchBucket":
                return NotFound(f"{where}: bucket '{loc.bucket}' does not exist at {endpoint}")
            if code in (
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "403",
                "InvalidToken",
                "ExpiredToken",
            ):
                return AccessDenied(
                    f"{where}: access denied by {endpoint} ({code}); check the credentials in "
                    f"spec.storage.credentialsSecret (or {names.ACCESS_KEY_ID} / {names.SECRET_ACCESS_KEY}) and "
                    "their permissions on the bucket"
                )
            # Only the error code and status: the message is the server's text, and a tenant picks the server.
            return StorageError(f"{where}: S3 error {_token(code) or status} (HTTP {status})")
        if isinstance(exc, FileNotFoundError):
            return NotFound(f"{where}: no such file or directory")
        if isinstance(exc, PermissionError):
            return AccessDenied(f"{where}: permission denied")
        if loc.is_s3:
            # botocore's own words may quote the server's answer (a parser error carries the body): never echo it.
            return StorageError(f"{where}: {type(exc).__name__} from S3 endpoint {endpoint}")
        return StorageError(f"{where}: {exc}")

    @contextlib.contextmanager
    def _guard(self, loc: Location, action: str) -> Iterator[None]:
        """Translate any I/O or S3 error raised inside into a StorageError that says what to fix."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc, loc, action) from exc

    # -- queries ------------------------------------------------------------------------

    def list_objects(self, uri: str | Location, limit: int | None = None) -> list[ObjectInfo]:
        """Every object at or below `uri` (a single object, or a prefix), sorted by key; with `limit`, at most
        that many (S3: the first pages only, so a prefix of millions of objects costs one request)."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "list"):
            if loc.is_s3:
                out: list[ObjectInfo] = []
                paginator = self.s3.get_paginator("list_objects_v2")
                pages = {"PageSize": min(1000, max(limit, 100))} if limit else {}
                for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key, PaginationConfig=pages):
                    if limit is not None and len(out) >= limit:
                        break
                    for obj in page.get("Contents", []):
                        key = obj["Key"]
                        if key.endswith("/"):
                            continue
                        # A prefix without a slash ("data/train") must not match "data/train2.jsonl".
                        if (
                            loc.key
                            and not loc.key.endswith("/")
                            and key != loc.key
                            and not key.startswith(loc.key + "/")
                        ):
                            continue
                        out.append(ObjectInfo(Location("s3", loc.bucket, key), obj["Size"], obj["ETag"].strip('"')))
                return sorted(out, key=lambda o: o.location.key)[:limit]
            path = loc.path
            if path.is_file():
                st = path.stat()
                return [ObjectInfo(loc, st.st_size, f"{st.st_mtime_ns}")]
            if not path.exists():
                return []
            files = []
            for p in sorted(path.rglob("*")):
                if p.is_file() and not p.name.startswith(".tmp-"):
                    st = p.stat()
                    files.append(ObjectInfo(Location("file", "", str(p)), st.st_size, f"{st.st_mtime_ns}"))
                    if limit is not None and len(files) >= limit:
                        break
            return files

    def list_dirs(self, uri: str | Location) -> list[str]:
        """Names of the immediate "sub-directories" below a prefix."""
        loc = (parse_uri(uri) if isinstance(uri, str) else uri).as_prefix()
        with self._guard(loc, "list"):
            if loc.is_s3:
                found = []
                for page in self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=loc.bucket, Prefix=loc.key, Delimiter="/"
                ):
                    found += [p["Prefix"][len(loc.key) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
                return sorted(found)
            path = loc.path
            return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []

    def exists(self, uri: str | Location) -> bool:
        """Whether a single object (not a prefix) exists."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        try:
            with self._guard(loc, "stat"):
                if loc.is_s3:
                    self.s3.head_object(Bucket=loc.bucket, Key=loc.key)
                    return True
                return loc.path.is_file()
        except NotFound:
            return False

    # -- reads --------------------------------------------------------------------------

    def read_bytes(self, uri: str | Location, max_bytes: int | None = None) -> bytes:
        """The whole object; with `max_bytes`, `TooLarge` (and nothing read beyond the limit) when it is larger."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "read"):
            if loc.is_s3:
                if max_bytes is None:
                    return bytes(self.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
                # A ranged GET of one byte past the limit: an oversized object is never transferred.
                response = self.s3.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes=0-{max_bytes}")
                data = bytes(response["Body"].read(max_bytes + 1))
                response["Body"].close()
                if len(data) > max_bytes:
                    total = str(response.get("ContentRange", "")).rpartition("/")[2]
                    raise TooLarge(
                        f"read {loc}: {total or 'more than ' + str(max_bytes)} bytes, over the {max_bytes} allowed"
                    )
                return data
            if max_bytes is not None and loc.path.stat().st_size > max_bytes:
                raise TooLarge(f"read {loc}: {loc.path.stat().st_size} bytes, over the {max_bytes} allowed")
            return loc.path.read_bytes()

    def read_text(self, uri: str | Location, max_bytes: int | None = None) -> str:
        return self.read_bytes(uri, max_bytes).decode("utf-8")

    def open_read(self, uri: str | Location) -> IO[bytes]:
        """A streaming binary reader (S3 objects are not loaded into memory at once)."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "read"):
            if loc.is_s3:
                body = self.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
                return body
            return loc.path.open("rb")

    # -- writes -------------------------------------------------------------------------

    def write_bytes(self, uri: str | Location, data: bytes) -> None:
        """Write a whole object atomically: readers see the old or the new content, never a mix."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "write"):
            if loc.is_s3:
                self.s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
                return
            path = loc.path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def write_text(self, uri: str | Location, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def delete(self, uri: str | Location) -> None:
        """Delete one object; deleting a missing object is not an error."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "delete"):
            if loc.is_s3:
                self.s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            else:
                loc.path.unlink(missing_ok=True)

    def delete_prefix(self, uri: str | Location) -> int:
        """Delete every object below a prefix; returns how many were deleted."""
        loc = (parse_uri(uri) if isinstance(uri, str) else uri).as_prefix()
        objects = self.list_objects(loc)
        with self._guard(loc, "delete"):
            if loc.is_s3:
                for i in range(0, len(objects), 1000):
                    batch = [{"Key": o.location.key} for o in objects[i : i + 1000]]
                    self.s3.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
                # Some S3-compatible servers (SeaweedFS) keep emptied "directories" as listable prefixes;
                # deleting their marker keys, deepest first, removes them (a no-op on AWS S3).
                folders = {loc.key}
                for obj in objects:
                    parts = obj.location.key[len(loc.key) :].split("/")[:-1]
                    folders |= {loc.key + "/".join(parts[: n + 1]) + "/" for n in range(len(parts))}
                for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
                    self.s3.delete_object(Bucket=loc.bucket, Key=folder)
            else:
                import shutil

                shutil.rmtree(loc.path, ignore_errors=True)
        return len(objects)

    # -- directories --------------------------------------------------------------------

    def upload_file(self, local: str | Path, uri: str | Location) -> None:
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        with self._guard(loc, "upload to"):
            if loc.is_s3:
                self.s3.upload_file(str(local), loc.bucket, loc.key, Config=_transfer_config())
            else:
                import shutil

                loc.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = loc.path.with_name(f".tmp-{loc.path.name}")
                shutil.copyfile(local, tmp)
                os.replace(tmp, loc.path)

    def download_file(self, uri: str | Location, local: str | Path) -> None:
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        with self._guard(loc, "download"):
            if loc.is_s3:
                self.s3.download_file(loc.bucket, loc.key, str(local), Config=_transfer_config())
            else:
                import shutil

                shutil.copyfile(loc.path, local)

    def upload_dir(self, local_dir: str | Path, uri: str | Location, exclude: tuple[str, ...] = ()) -> int:
        """Upload every file below `local_dir` in parallel; returns bytes uploaded."""
        loc = (parse_uri(uri) if isinstance(uri, str) else uri).as_prefix()
        root = Path(local_dir)
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in exclude]
        self._parallel(lambda p: self.upload_file(p, loc.join(p.relative_to(root).as_posix())), files)
        return sum(p.stat().st_size for p in files)

    def download_dir(self, uri: str | Location, local_dir: str | Path) -> int:
        """Download every object below a prefix in parallel; returns bytes downloaded.

        Every key is checked first (`keys.safe_join`): one that would land outside `local_dir` raises
        `UnsafeKey` naming it, and nothing is downloaded."""
        loc = (parse_uri(uri) if isinstance(uri, str) else uri).as_prefix()
        objects = self.list_objects(loc)
        targets = [(obj.location, safe_join(local_dir, obj.location.key[len(loc.key) :], obj.uri)) for obj in objects]
        self._parallel(lambda item: self.download_file(*item), targets)
        return sum(o.size for o in objects)

    def _parallel(self, fn: Any, items: list[Any]) -> None:
        if not items:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.max_workers, len(items))) as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()

    # -- checks -------------------------------------------------------------------------

    def check_bucket(self, uri: str | Location) -> None:
        """Raise a StorageError unless the bucket of an s3:// location answers HeadBucket."""
        loc = parse_uri(uri) if isinstance(uri, str) else uri
        if not loc.is_s3:
            return
        try:
            with self._guard(loc, "reach bucket of"):
                self.s3.head_bucket(Bucket=loc.bucket)
        except NotFound:
            # HeadBucket has no body, so a missing bucket is a bare 404 that reads like a missing object.
            raise NotFound(
                f"bucket '{loc.bucket}' does not exist at {self.settings.endpoint or 'AWS S3'}; create it or "
                "fix the bucket name in the URI"
            ) from None


@functools.cache
def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=64 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024, max_concurrency=8)
