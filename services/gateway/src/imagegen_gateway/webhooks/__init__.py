"""Webhooks of REST jobs: Standard Webhooks signing, SSRF-safe delivery and the durable dispatcher."""
