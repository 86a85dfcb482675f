"""Structured logs: one JSON object per line (containers) or a readable line (a developer's terminal).

Secrets never reach a log line: API tokens (``igk_…``) and bearer credentials are masked by the
formatter itself, whatever the caller passed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]

_SECRET = re.compile(r"(igk_|iga_)[A-Za-z0-9_\-]{4,}|(?i:bearer\s+)[A-Za-z0-9_\-\.=]{8,}")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

PROMPT_PREVIEW_CHARS = 32


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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
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
