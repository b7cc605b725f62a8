"""`spec.checkpoint.export.push`: upload the exported model to a Hugging Face Hub repository.

The Ray pods run with HF_HUB_OFFLINE=1 (models load from the cache, never half-downloaded during a
run), and huggingface_hub reads that once at import. So the upload runs in a child process started
without it, with the token in its environment only (from the Secret named by `tokenSecret`, which
the operator maps to CPT_HUB_PUSH_TOKEN; `cpt run` takes HF_TOKEN from the environment). The child
is bounded: `ATTEMPTS` tries of `HfApi.upload_folder` with backoff, and a wall-clock timeout.

A failed upload does not fail the run: the model in `final/` is the result; the failure is logged
in one line and recorded in `final/cpt_export.json`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from cpt_core.api.v1alpha1 import HubPushSpec
from cpt_core.contract import layout, names

log = logging.getLogger(__name__)

ATTEMPTS = 3
BACKOFF_SECONDS = 10.0
TIMEOUT_SECONDS = 3600.0


class PushError(RuntimeError):
    """The upload did not happen; the message is one line and never contains the token."""


def token_from_env() -> str | None:
    return os.environ.get(HubPushSpec.TOKEN_ENV) or os.environ.get(HubPushSpec.TOKEN_KEY)


def push_folder(folder: Path, push: HubPushSpec, job: str, timeout: float = TIMEOUT_SECONDS) -> str:
    """Upload `folder` to `push.repo` in a child process; the commit URL, or PushError."""
    token = token_from_env()
    if not token:
        where = f"Secret '{push.token_secret}' (key {push.TOKEN_KEY})" if push.token_secret else names.HF_TOKEN
        raise PushError(f"spec.checkpoint.export.push: no Hub token: {where} is empty or missing; set it or drop push")
    env = {k: v for k, v in os.environ.items() if k not in (names.HF_OFFLINE_ENV, "TRANSFORMERS_OFFLINE")}
    env[HubPushSpec.TOKEN_KEY] = token
    env.pop(HubPushSpec.TOKEN_ENV, None)
    command = [sys.executable, "-m", "cpt_trainer.export.push", str(folder), push.repo, str(push.private).lower(), job]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PushError(f"upload to {push.repo} did not finish within {timeout:.0f}s") from None
    lines = (done.stdout or "").strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr or "").strip().splitlines()
        raise PushError(f"upload to {push.repo} failed: {reason[-1] if reason else f'exit {done.returncode}'}")
    return lines[-1]


def _upload(folder: str, repo: str, private: bool, job: str) -> str:
    """In the child: create the repository if needed, then upload with bounded retries."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: the export folder does not exist")
    api = HfApi()  # the token comes from HF_TOKEN in this process' environment
    last: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo,
                folder_path=folder,
                repo_type="model",
                commit_message=f"cpt-operator: export of CPTJob {job}",
                ignore_patterns=[layout.EXPORTING],
            )
            return str(info.commit_url)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise  # a wrong token, repository or permission: retrying cannot help
            last = exc
        except OfflineModeIsEnabled:
            raise  # HF_HUB_OFFLINE in this process: no retry can reach the Hub
        except OSError as exc:  # connection errors
            last = exc
        if attempt < ATTEMPTS:
            time.sleep(BACKOFF_SECONDS * attempt)
    assert last is not None
    raise last


def main(argv: list[str]) -> int:
    folder, repo, private, job = argv
    try:
        print(_upload(folder, repo, private == "true", job))
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        print(f"{type(exc).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
