"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every POST and answers
each path with the statuses a test scripts for it (then 200)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from imagegen_testing.polling import eventually_blocking


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class WebhookReceiver:
    """``with WebhookReceiver() as receiver``: POSTs to ``receiver.url(path)`` are kept in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._scripts: dict[str, list[int]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status = receiver._next_status(self.path)
                with receiver._lock:
                    receiver._deliveries.append(
                        Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *statuses: int) -> None:
        """Answer the next POSTs to ``path`` with these statuses, then 200."""
        with self._lock:
            self._scripts[path] = list(statuses)

    def _next_status(self, path: str) -> int:
        with self._lock:
            script = self._scripts.get(path)
            return script.pop(0) if script else 200

    def deliveries(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if d.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60.0) -> list[Delivery]:
        """The first ``count`` deliveries to ``path``, once they came (bounded by ``timeout``)."""
        eventually_blocking(
            lambda: len(self.deliveries(path)) >= count,
            timeout=timeout,
            what=f"{count} deliveries to {path}",
            detail=lambda: f"{len(self.deliveries(path))} arrived",
        )
        found = self.deliveries(path)
        return found[:count]

    def __iter__(self) -> Iterator[Delivery]:
        with self._lock:
            return iter(list(self._deliveries))
