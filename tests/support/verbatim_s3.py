"""An S3 endpoint that keeps every key verbatim, as AWS S3 does: a front on 127.0.0.1 before the real server.

AWS S3 stores any UTF-8 key as it is: `model/../../escaped.txt`, `model//x` and `/x` are three objects,
listed exactly so. SeaweedFS (the real server of the tests, devkit/seaweed.py) refuses keys with `.` or
`..` segments (InvalidRequest) and collapses empty segments, so such a key cannot be planted through it;
a tenant who can write a job's bucket on AWS, or who points `spec.storage.endpoint` at a server of their
own, can. `VerbatimS3` passes every request through to SeaweedFS unchanged (the Host header too, so the
client's signature still verifies) and holds only the keys SeaweedFS would not keep (`is_odd`) itself:
it lists them among the server's own objects, answers HEAD and GET (ranges too) for them, copies and
deletes them. `plant(key, data)` puts one there, as the tenant would.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from xml.etree import ElementTree

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def is_odd(key: str) -> bool:
    """Whether SeaweedFS would refuse or rewrite this key: a leading `/`, an empty, `.` or `..` segment."""
    segments = key.split("/")
    inner = segments[:-1] if key.endswith("/") else segments  # a trailing `/` is a folder marker, not odd
    return key.startswith("/") or any(s in ("", ".", "..") for s in inner)


@dataclass
class _Object:
    data: bytes
    modified: float

    @property
    def etag(self) -> str:
        return hashlib.md5(self.data).hexdigest()  # S3's ETag of a single-part upload


class VerbatimS3:
    """The front: `endpoint` is what clients use instead of the server's; `plant` adds an odd key."""

    def __init__(self, upstream_port: int, bucket: str) -> None:
        self.upstream_port, self.bucket = upstream_port, bucket
        self.objects: dict[str, _Object] = {}
        self.served: list[str] = []
        """The odd keys clients read (GET), in order."""
        self._lock = threading.Lock()
        front = self

        class Handler(_Handler):
            verbatim = front

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="verbatim-s3", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> VerbatimS3:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def plant(self, key: str, data: bytes) -> None:
        """Store `data` under an odd `key`, as AWS S3 would after a tenant's PutObject."""
        assert is_odd(key), f"{key!r} is an ordinary key: upload it to the server itself"
        with self._lock:
            self.objects[key] = _Object(data, time.time())

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self.objects if k.startswith(prefix))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    verbatim: VerbatimS3

    def log_message(self, format: str, *args: object) -> None:
        pass

    # -- one request ---------------------------------------------------------------------------------

    def _handle(self) -> None:
        body = self._read_body()
        split = urllib.parse.urlsplit(self.path)
        bucket, _, raw_key = split.path.lstrip("/").partition("/")
        key = urllib.parse.unquote(raw_key)
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        front = self.verbatim
        copy_source = self.headers.get("x-amz-copy-source")
        if bucket == front.bucket and key and self.command in ("GET", "HEAD") and is_odd(key):
            return self._get_odd(key)
        if bucket == front.bucket and key and self.command == "DELETE" and is_odd(key):
            with front._lock:
                front.objects.pop(key, None)
            return self._reply(204, b"")
        if bucket == front.bucket and key and self.command == "PUT" and copy_source:
            source_key = urllib.parse.unquote(copy_source.lstrip("/")).partition("/")[2]
            if is_odd(source_key) or is_odd(key):
                return self._copy_odd(source_key, key)
        if bucket == front.bucket and not key and self.command == "POST" and "delete" in query:
            self._forget_deleted(body)
        status, headers, data = self._forward(body)
        listing = bucket == front.bucket and not key and self.command == "GET" and query.get("list-type") == ["2"]
        if listing and status == 200 and "continuation-token" not in query:
            data = self._merge_listing(data, query)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        self._reply(status, data, headers, head=self.command == "HEAD")

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    # -- plumbing ------------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:  # forwarded as it came (aws-chunked payloads are signed chunk by chunk)
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return raw
                raw += self.rfile.read(size + 2)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.verbatim.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders()], data
        finally:
            connection.close()

    def _reply(
        self, status: int, data: bytes, headers: list[tuple[str, str]] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        length_sent = False
        for name, value in headers or []:
            if name.lower() in _HOP_BY_HOP or (name.lower() == "content-length" and not head):
                continue
            length_sent |= name.lower() == "content-length"
            self.send_header(name, value)
        if not length_sent:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head and data:
            self.wfile.write(data)

    def _error(self, status: int, code: str, key: str) -> None:
        xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Key>{_escape(key)}</Key></Error>"
        self._reply(status, xml.encode(), [("Content-Type", "application/xml")], head=self.command == "HEAD")

    # -- the odd keys --------------------------------------------------------------------------------

    def _get_odd(self, key: str) -> None:
        front = self.verbatim
        with front._lock:
            found = front.objects.get(key)
        if found is None:
            return self._error(404, "NoSuchKey", key)
        data, status = found.data, 200
        headers = [
            ("ETag", f'"{found.etag}"'),
            ("Last-Modified", formatdate(found.modified, usegmt=True)),
            ("Accept-Ranges", "bytes"),
            ("Content-Type", "application/octet-stream"),
        ]
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
            headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
            data, status = data[start : end + 1], 206
        if self.command == "GET":
            with front._lock:
                front.served.append(key)
            self._reply(status, data, headers)
        else:
            self._reply(status, b"", [*headers, ("Content-Length", str(len(data)))], head=True)

    def _copy_odd(self, source_key: str, key: str) -> None:
        front = self.verbatim
        with front._lock:
            found = front.objects.get(source_key)
            if found is not None and is_odd(key):
                front.objects[key] = _Object(found.data, time.time())
        if found is None or not is_odd(key):
            # An odd key copied to an ordinary one would need a request of our own to the server: never made.
            return self._error(404 if found is None else 501, "NoSuchKey" if found is None else "NotImplemented", key)
        xml = (
            f"<?xml version='1.0' encoding='UTF-8'?><CopyObjectResult><ETag>\"{found.etag}\"</ETag>"
            f"<LastModified>{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime())}</LastModified></CopyObjectResult>"
        )
        self._reply(200, xml.encode(), [("Content-Type", "application/xml")])

    def _forget_deleted(self, body: bytes) -> None:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            return
        front = self.verbatim
        with front._lock:
            for element in root.iter():
                if element.tag.rsplit("}", 1)[-1] == "Key" and element.text:
                    front.objects.pop(element.text, None)

    def _merge_listing(self, data: bytes, query: dict[str, list[str]]) -> bytes:
        """The server's ListObjectsV2 page with the odd keys below its prefix added, in key order."""
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        encoded = query.get("encoding-type", [""])[0] == "url"
        odd = self.verbatim.keys(prefix)
        if not odd:
            return data
        ElementTree.register_namespace("", _NS)
        root = ElementTree.fromstring(data)

        def decoded(text: str | None) -> str:
            return urllib.parse.unquote(text or "") if encoded else (text or "")

        def shown(text: str) -> str:
            return urllib.parse.quote(text, safe="/") if encoded else text

        contents = {decoded(c.findtext(f"{{{_NS}}}Key")): c for c in root.findall(f"{{{_NS}}}Contents")}
        prefixes = {decoded(p.findtext(f"{{{_NS}}}Prefix")): p for p in root.findall(f"{{{_NS}}}CommonPrefixes")}
        for key in odd:
            rest = key[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest.split(delimiter, 1)[0] + delimiter
                if common not in prefixes:
                    element = ElementTree.Element(f"{{{_NS}}}CommonPrefixes")
                    ElementTree.SubElement(element, f"{{{_NS}}}Prefix").text = shown(common)
                    prefixes[common] = element
                continue
            with self.verbatim._lock:
                found = self.verbatim.objects[key]
            element = ElementTree.Element(f"{{{_NS}}}Contents")
            for tag, text in (
                ("Key", shown(key)),
                ("LastModified", time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(found.modified))),
                ("ETag", f'"{found.etag}"'),
                ("Size", str(len(found.data))),
                ("StorageClass", "STANDARD"),
            ):
                ElementTree.SubElement(element, f"{{{_NS}}}{tag}").text = text
            contents[key] = element
        for element in [*root.findall(f"{{{_NS}}}Contents"), *root.findall(f"{{{_NS}}}CommonPrefixes")]:
            root.remove(element)
        for key in sorted(contents):
            root.append(contents[key])
        for common in sorted(prefixes):
            root.append(prefixes[common])
        count = root.find(f"{{{_NS}}}KeyCount")
        if count is not None:
            count.text = str(len(contents) + len(prefixes))
        return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
