"""Structured logs: one JSON object per line (containers) or a readable line (a developer's terminal).

Secrets never reach a log line: API tokens (``igk_…``) and bearer credentials are masked by the
formatter itself, whatever the caller passed. Nor can text from a client (a prompt, a header) forge a
line or hide one: control characters (newlines, NUL, ANSI escapes, C1), line/paragraph separators and
bidirectional overrides are escaped by every formatter.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from imagegen_common.tracing import log_ids

LogFormat = Literal["json", "text"]

_SECRET = re.compile(r"(igk_|iga_)[A-Za-z0-9_\-]{4,}|(?i:bearer\s+)[A-Za-z0-9_\-\.=]{8,}")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

PROMPT_PREVIEW_CHARS = 32

# C0 and C1 controls, DEL, the Unicode line/paragraph separators and the bidirectional formatting
# characters (LRM/RLM, embeddings and overrides, isolates): what lets a string start a new line,
# move the cursor, recolour a terminal or reorder what a reader sees.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """Shows control and bidi characters as escapes (``\\n``, ``\\u001b``) so that a string stays
    on its line and reads as written."""
    return _UNSAFE.sub(_escape_char, text)


def redact(text: str) -> str:
    """Masks API tokens and bearer credentials in a string."""
    return _SECRET.sub(lambda m: (m.group(1) or "Bearer ") + "***", text)


def prompt_preview(prompt: str) -> str:
    """What a log may say of a prompt: its length and first few characters, never the whole."""
    head = prompt[:PROMPT_PREVIEW_CHARS]
    return f"{head}… ({len(prompt)} chars)" if len(prompt) > PROMPT_PREVIEW_CHARS else head


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        entry.update(log_ids())  # the trace of the line, when tracing is on
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls itself but leaves C1, separators and bidi characters raw.
        return redact(escape_controls(json.dumps(entry, default=str, ensure_ascii=False)))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={escape_controls(str(v))}" for k, v in extras.items())
        if record.exc_info:
            # A traceback keeps its lines, each marked as part of this entry, so none reads as a line
            # of its own; what is inside them is escaped like the rest.
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {escape_controls(part)}" for part in trace.splitlines())
        return redact(line)


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat = "json") -> None:
    """Routes every logger (ours and libraries') through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "httpx",
        "httpcore",
        "nats",
        "aiosqlite",
        "sqlalchemy.engine",
        "mcp.server.streamable_http",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
