"""`imagegen admin oauth-client create`: an operator pre-registers a confidential OAuth client (for a
connector that cannot register itself), through billing's OAuthService with the admin token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

import grpc
import typer

from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen.oauth.v1 import oauth_service_pb2_grpc
from imagegen_billing.admin_cli import _admin, app, fail
from imagegen_billing.portal_admin_cli import _explain
from imagegen_common.redirects import redirect_uri_allowed

oauth_client_app = typer.Typer(help="Pre-register OAuth clients (MCP connectors).", no_args_is_help=True)
app.add_typer(oauth_client_app, name="oauth-client")


@oauth_client_app.command("create")
def oauth_client_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="The name people see on the consent page.")],
    redirect_uris: Annotated[
        list[str], typer.Option("--redirect-uri", help="An exact redirect URI (repeat for more).")
    ],
) -> None:
    """Register a confidential client; prints its client id and secret (shown once, stored hashed)."""
    admin = _admin(ctx)
    if not admin.token:
        fail("no admin token: pass --admin-token or set IMAGEGEN_ADMIN_TOKEN", code=2)
    refused = [uri for uri in redirect_uris if not redirect_uri_allowed(uri)]
    if refused:
        fail(f"redirect URIs must be https, or http on a loopback address: {refused[0]}", code=2)
    metadata = {
        "client_name": name,
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post",
    }
    request = pb.RegisterClientRequest(
        kind=pb.CLIENT_KIND_OPERATOR, client_name=name, metadata_json=json.dumps(metadata)
    )
    with grpc.insecure_channel(admin.address) as channel:
        try:
            reply: pb.RegisterClientResponse = oauth_service_pb2_grpc.OAuthServiceStub(
                channel
            ).RegisterClient(
                request, metadata=(("authorization", f"Bearer {admin.token}"),), timeout=admin.timeout
            )
        except grpc.RpcError as error:
            fail(_explain(admin, error))
    data = {
        "client_id": reply.client.client_id,
        "client_secret": reply.client_secret,
        "name": reply.client.client_name,
        "redirect_uris": redirect_uris,
    }

    def lines() -> Iterator[str]:
        yield f"client_id      {reply.client.client_id}"
        yield f"client_secret  {reply.client_secret}"
        yield "(the secret is shown only now; it is stored hashed)"

    admin.show(data, lines)
