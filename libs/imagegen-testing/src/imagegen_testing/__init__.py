"""Fixtures and helpers that start real servers for imagegen's tests."""

from imagegen_testing.polling import eventually, eventually_blocking

__all__ = ["eventually", "eventually_blocking"]
