"""The asynchronous REST API under /api: thin routes over the generation flow shared with MCP."""
