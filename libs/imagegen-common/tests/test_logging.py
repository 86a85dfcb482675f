"""Log lines: one entry a line whatever a client wrote, and no secret in them."""

from __future__ import annotations

import json
import logging

import pytest

from imagegen_common.logging import JsonFormatter, TextFormatter, escape_controls

#: A prompt that tries to end its line, write a fake entry, recolour the terminal, hide text behind a
#: NUL and reverse what a reader sees.
HOSTILE = 'cat\n{"level": "error", "message": "forged"}\r\x00\x1b[31mred\x1b[0m \u202egnp.exe\u2028next\x85c1'
UNSAFE_CHARS = ("\n", "\r", "\x00", "\x1b", "\u202e", "\u2028", "\x85")


def _record(message: str, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "test", "levelname": "INFO", "levelno": 20, "msg": message})
    for key, value in extra.items():
        setattr(record, key, value)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return record


def test_escape_controls_shows_each_unsafe_character_as_an_escape() -> None:
    assert escape_controls("a\nb\tc\x1bd\u202ee") == "a\\nb\\tc\\u001bd\\u202ee"
    assert escape_controls("plain text, é and 日本") == "plain text, é and 日本"


def test_json_lines_keep_hostile_text_on_one_line_and_read_back_unchanged() -> None:
    line = JsonFormatter("gateway").format(_record(HOSTILE, prompt=HOSTILE))
    assert not any(char in line for char in UNSAFE_CHARS)
    entry = json.loads(line)
    assert entry["message"] == HOSTILE
    assert entry["prompt"] == HOSTILE


def test_text_lines_escape_hostile_text_in_message_and_fields() -> None:
    line = TextFormatter("gateway").format(_record(HOSTILE, prompt=HOSTILE))
    assert not any(char in line for char in UNSAFE_CHARS)
    assert "\\n" in line
    assert "\\u001b[31m" in line
    assert "\\u202e" in line


def test_text_tracebacks_mark_every_line_as_part_of_the_entry() -> None:
    try:
        raise ValueError("bad prompt:\nFAKE ERROR line")
    except ValueError as exc:
        error = exc
    lines = TextFormatter("gateway").format(_record("failed", exc=error)).split("\n")
    assert "failed" in lines[0]
    assert len(lines) > 2
    assert all(line.startswith("  | ") for line in lines[1:])


@pytest.mark.parametrize("formatter", [JsonFormatter("billing"), TextFormatter("billing")])
def test_tokens_are_masked_in_every_format(formatter: logging.Formatter) -> None:
    secret = "igk_AbCdEfGhIjKlMnOpQrStUv"
    line = formatter.format(_record(f"token {secret}", header=f"Bearer {secret}"))
    assert secret not in line
    assert "igk_***" in line
