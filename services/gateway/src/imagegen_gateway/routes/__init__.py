"""HTTP routes of the gateway besides MCP."""
