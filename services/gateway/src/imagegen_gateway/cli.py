"""`imagegen gateway`: runs one gateway (MCP and REST over HTTP)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the gateway service (MCP at /api/mcp, REST under /api).", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def serve(ctx: typer.Context) -> None:
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish (up to the drain timeout)."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio
    import signal

    import uvicorn

    from imagegen_common.logging import configure_logging
    from imagegen_common.ops_http import EmbeddedServer
    from imagegen_common.tracing import setup_tracing
    from imagegen_gateway.app import create_app
    from imagegen_gateway.config import GatewaySettings

    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level, settings.log_format)
    setup_tracing("gateway")
    host, port = settings.listen
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.gateway_drain_timeout_seconds),
        proxy_headers=True,
        server_header=False,
    )
    server = EmbeddedServer(config)

    async def run() -> None:
        # Our own handlers: uvicorn's re-raise the signal once drained, so the process would end
        # "killed by SIGTERM" instead of exiting 0 after a clean drain.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve()

    asyncio.run(run())
