"""imagegen as its own OAuth 2.1 authorization server for MCP connectors (issue 12).

``routes.install_oauth(app, settings)`` is the one hook into the gateway's app: the metadata documents,
``/authorize`` (through the portal's sign-in and a consent page), ``/token``, ``/register`` and
``/revoke``, built on the ``mcp`` SDK's handlers; billing's OAuthService holds every piece of state.
"""
