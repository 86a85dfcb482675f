"""FastAPI dependencies of the gateway's routes."""

from __future__ import annotations

from fastapi import Request

from imagegen_gateway.state import Gateway


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway
