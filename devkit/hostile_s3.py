"""An S3-shaped HTTP server that answers like a bucket but serves what the test wants: a stand-in for an
internal service (or a hostile endpoint) a job names as its storage. Every bucket exists, every listing has
one object, writes and deletes succeed, and every GET returns `body` (a non-S3 answer: a password, HTML).
It counts the requests it gets, so a test can tell whether the operator called it at all."""

from __future__ import annotations

import http.server
import threading
from typing import Any

LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
    "<Contents><Key>{prefix}object.jsonl</Key><Size>3</Size><ETag>&quot;x&quot;</ETag></Contents></ListBucketResult>"
)


class HostileS3:
    def __init__(self, body: bytes, host: str = "127.0.0.1", errors: bool = False) -> None:
        """`errors=True`: every request fails with an S3 error document whose message is `body` (an endpoint
        that puts whatever it likes into the text a client would show)."""
        self.body = body
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, data: bytes = b"", content_type: str = "application/xml") -> None:
                outer.requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self) -> bool:
                if errors:
                    document = b"<Error><Code>SlowDown2</Code><Message>" + outer.body + b"</Message></Error>"
                    self._answer(500, b"" if self.command == "HEAD" else document)
                return errors

            def do_HEAD(self) -> None:
                if not self._error():
                    self._answer(200)

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._error():
                    self._answer(200)

            def do_DELETE(self) -> None:
                if not self._error():
                    self._answer(204)

            def do_GET(self) -> None:
                if self._error():
                    return
                if "list-type=2" in self.path:
                    prefix = self.path.split("prefix=", 1)[1].split("&", 1)[0] if "prefix=" in self.path else ""
                    from urllib.parse import unquote

                    self._answer(200, LISTING.format(prefix=unquote(prefix)).encode())
                else:
                    self._answer(200, outer.body, "text/plain")

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-s3", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HostileS3:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
