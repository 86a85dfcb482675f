"""The MCP server: its tools (`tools`) and the HTTP transport in front of the SDK (`transport`)."""
