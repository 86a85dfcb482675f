"""Billing authenticates the calling service and authorises it per method, over real gRPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen.oauth.v1 import oauth_service_pb2 as oauth_pb
from imagegen.payments.v1 import payments_service_pb2 as payments_pb
from imagegen.portal.v1 import portal_service_pb2 as portal_pb
from imagegen_billing.config import BillingSettings, caller_secret_problems
from imagegen_billing.interceptors import BILLING_SERVICE, CALLER_METHODS, CallerAuthInterceptor
from imagegen_billing.server import BillingServer
from imagegen_common import rpc_errors
from imagegen_common.rpc_errors import ErrorReason
from imagegen_common.service_auth import Caller, caller_metadata, new_secret

Start = Callable[[BillingSettings], Awaitable[BillingServer]]


async def _refusal(call: Awaitable[object]) -> rpc_errors.RpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return rpc_errors.from_error(raised.value)


async def _account(admin: admin_service_pb2_grpc.AdminServiceAsyncStub, server: BillingServer) -> str:
    metadata = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]
    created = await admin.CreateAccount(
        admin_pb.CreateAccountRequest(email="who@example.test", credits=10), metadata=metadata
    )
    return str(created.account.id)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("imagegen-caller", "gateway"),),
        (("imagegen-caller", "gateway"), ("imagegen-caller-secret", "not-the-secret-0123456789")),
        (("imagegen-caller", "root"), ("imagegen-caller-secret", "x" * 40)),
    ],
    ids=["none", "no-secret", "wrong-secret", "unknown-identity"],
)
async def test_a_call_without_valid_service_credentials_is_unauthenticated(
    billing_server: BillingServer, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(billing_server.settings.billing_listen) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        for call in (
            stub.GetAccount(pb.GetAccountRequest(account_id="acc_x"), metadata=metadata),
            stub.GetWebhookSettings(pb.GetWebhookSettingsRequest(account_id="acc_x"), metadata=metadata),
            stub.Reserve(pb.ReserveRequest(account_id="acc_x", job_id="img_1", amount=1), metadata=metadata),
            stub.Release(pb.ReleaseRequest(job_id="img_1"), metadata=metadata),
        ):
            error = await _refusal(call)
            assert error.code == grpc.StatusCode.UNAUTHENTICATED
            assert error.reason == ErrorReason.ERROR_REASON_CALLER_UNAUTHENTICATED


async def test_the_gateway_identity_is_refused_webhook_secrets(
    billing_server: BillingServer, caller_secrets: dict[Caller, str]
) -> None:
    gateway = caller_metadata(Caller.GATEWAY, caller_secrets[Caller.GATEWAY])
    webhooks = caller_metadata(Caller.WEBHOOKS, caller_secrets[Caller.WEBHOOKS])
    async with grpc.aio.insecure_channel(billing_server.settings.billing_listen) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        account_id = await _account(admin_service_pb2_grpc.AdminServiceStub(channel), billing_server)
        request = pb.GetWebhookSettingsRequest(account_id=account_id)

        error = await _refusal(stub.GetWebhookSettings(request, metadata=gateway))
        assert error.code == grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == ErrorReason.ERROR_REASON_CALLER_NOT_PERMITTED
        assert error.metadata == {"caller": "gateway", "method": f"/{BILLING_SERVICE}/GetWebhookSettings"}

        assert (await stub.GetWebhookSettings(request, metadata=webhooks)).settings is not None
        # …and the dispatcher's identity cannot reserve credits or read accounts.
        for call in (
            stub.Reserve(
                pb.ReserveRequest(account_id=account_id, job_id="img_1", amount=1), metadata=webhooks
            ),
            stub.GetAccount(pb.GetAccountRequest(account_id=account_id), metadata=webhooks),
            # the waits' batched status reads are the gateway's alone
            stub.BatchGetReservations(pb.BatchGetReservationsRequest(job_ids=["img_1"]), metadata=webhooks),
            stub.Authenticate(pb.AuthenticateRequest(token="igt_x"), metadata=webhooks),
        ):
            assert (await _refusal(call)).code == grpc.StatusCode.PERMISSION_DENIED
        account = await stub.GetAccount(pb.GetAccountRequest(account_id=account_id), metadata=gateway)
        assert account.account.credits == 10
        batch = pb.BatchGetReservationsRequest(job_ids=["img_1"])
        assert list((await stub.BatchGetReservations(batch, metadata=gateway)).reservations) == []


async def test_a_method_nobody_is_granted_is_denied_to_every_identity(
    caller_secrets: dict[Caller, str],
) -> None:
    """Deny by default: a method (or a new service such as PortalService) missing from the table is
    closed to every identity, while a listed one passes."""
    listed = set().union(*CALLER_METHODS.values())
    every = {
        f"/{service.full_name}/{m.name}"
        for module in (pb, portal_pb, payments_pb, oauth_pb)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    assert listed <= every  # no name in the table that no service has (a typo would grant nothing)
    interceptor = CallerAuthInterceptor({c: (s,) for c, s in caller_secrets.items()})
    served = grpc.unary_unary_rpc_method_handler(lambda request, context: b"served")

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return served

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
            self.method = method
            self.invocation_metadata = metadata

    for caller in Caller:
        metadata = caller_metadata(caller, caller_secrets[caller])
        for method in ("/imagegen.portal.v1.PortalService/NewMethod", f"/{BILLING_SERVICE}/NewMethod"):
            handler = await interceptor.intercept_service(continuation, Details(method, metadata))
            assert handler is not served, (caller, method)
        granted = f"/{BILLING_SERVICE}/GetReservation"
        assert await interceptor.intercept_service(continuation, Details(granted, metadata)) is served


async def test_during_a_rotation_both_secrets_are_accepted_and_no_other(
    sqlite_url: str, make_settings: Callable[..., BillingSettings], start_billing: Start
) -> None:
    old, new = new_secret(), new_secret()
    server = await start_billing(
        make_settings(sqlite_url, billing_gateway_secret=new, billing_gateway_secret_previous=old)
    )
    async with grpc.aio.insecure_channel(server.settings.billing_listen) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        for secret in (old, new):
            await stub.ListModels(pb.ListModelsRequest(), metadata=caller_metadata(Caller.GATEWAY, secret))
        error = await _refusal(
            stub.ListModels(pb.ListModelsRequest(), metadata=caller_metadata(Caller.GATEWAY, new_secret()))
        )
        assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_an_identity_without_a_configured_secret_is_refused_even_with_an_empty_one(
    sqlite_url: str, make_settings: Callable[..., BillingSettings], start_billing: Start
) -> None:
    settings = make_settings(sqlite_url, billing_webhooks_secret="", billing_gateway_secret="short")
    assert len(caller_secret_problems(settings)) == 2
    server = await start_billing(settings)
    async with grpc.aio.insecure_channel(server.settings.billing_listen) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        for caller, secret in ((Caller.WEBHOOKS, ""), (Caller.GATEWAY, "short")):
            error = await _refusal(
                stub.ListModels(pb.ListModelsRequest(), metadata=caller_metadata(caller, secret))
            )
            assert error.code == grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_the_admin_token_need_no_service_credentials(billing_server: BillingServer) -> None:
    async with grpc.aio.insecure_channel(billing_server.settings.billing_listen) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert await _account(admin_service_pb2_grpc.AdminServiceStub(channel), billing_server)


async def test_the_portals_and_payments_calls_are_the_gateways_and_operator_calls_need_no_identity(
    caller_secrets: dict[Caller, str],
) -> None:
    """The portal's pages and the payments flow run in the gateway: its identity may call them, the
    webhook dispatcher's may not; the admin CLI's portal calls pass to the servicer's admin-token check."""
    interceptor = CallerAuthInterceptor({c: (s,) for c, s in caller_secrets.items()})
    served = grpc.unary_unary_rpc_method_handler(lambda request, context: b"served")

    async def continuation(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return served

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
            self.method = method
            self.invocation_metadata = metadata

    gateway = caller_metadata(Caller.GATEWAY, caller_secrets[Caller.GATEWAY])
    webhooks = caller_metadata(Caller.WEBHOOKS, caller_secrets[Caller.WEBHOOKS])
    for method in (
        "/imagegen.portal.v1.PortalService/GetSession",
        "/imagegen.payments.v1.PaymentsService/FulfillCheckoutSession",
    ):
        assert await interceptor.intercept_service(continuation, Details(method, gateway)) is served
        assert await interceptor.intercept_service(continuation, Details(method, webhooks)) is not served
        assert await interceptor.intercept_service(continuation, Details(method, ())) is not served
    operator = "/imagegen.portal.v1.PortalService/CreateLoginLink"
    assert await interceptor.intercept_service(continuation, Details(operator, ())) is served
