"""Fixtures and helpers that start real servers for imagegen's tests."""
