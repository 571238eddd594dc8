"""A local HTTP server on 127.0.0.1 for the fetch tests (never the network): serves bytes
from memory, with or without Range support, and can cut a response off part way."""

from __future__ import annotations

import dataclasses
import http.server
import re
import threading


@dataclasses.dataclass
class Served:
    """What a request asked for and got."""

    path: str
    range: str | None
    status: int
    sent: int


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True  # honour Range requests
        self.cut_after: list[int] = []  # per coming response: bytes sent before hanging up
        self.log: list[Served] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                owner._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    @property
    def bytes_sent(self) -> int:
        return sum(s.sent for s in self.log)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, handler):
        path = handler.path.lstrip("/")
        asked = handler.headers.get("Range")
        data = self.files.get(path)
        if data is None:
            self.log.append(Served(path, asked, 404, 0))
            handler.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if self.ranges and match:
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.log.append(Served(path, asked, 416, 0))
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        body = data[start:]
        cut = self.cut_after.pop(0) if self.cut_after else None
        sent = body if cut is None else body[:cut]
        # Every response is logged before any of it goes out: the client may finish reading
        # (and the test assert on the log) before this thread runs again.
        self.log.append(Served(path, asked, status, len(sent)))
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", f'"{hash(data) & 0xFFFFFFFF:x}"')
        if self.ranges:
            handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        handler.wfile.write(sent)
        handler.wfile.flush()
        if cut is not None:
            handler.close_connection = True  # hang up part way, as a lost connection does
