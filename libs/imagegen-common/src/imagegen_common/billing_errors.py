"""What billing's gRPC errors carry besides their message, for clients that act on the numbers.

An "insufficient credits" FAILED_PRECONDITION has these trailing metadata entries, so that no client
parses the human sentence.
"""

from __future__ import annotations

REQUIRED_CREDITS = "imagegen-required-credits"
AVAILABLE_CREDITS = "imagegen-available-credits"
