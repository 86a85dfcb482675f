"""Server interceptors: metrics, logs and error mapping of every RPC, the admin token check, and the
service credentials and per-method permissions of every other call (``CALLER_METHODS``)."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from imagegen.billing.v1 import billing_service_pb2
from imagegen_billing import metrics
from imagegen_billing.domain import (
    AlreadyExistsError,
    BillingError,
    ErrorReason,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
)
from imagegen_common import rpc_errors
from imagegen_common.catalog import CatalogError, UnknownModelError
from imagegen_common.service_auth import CALLER_KEY, SECRET_KEY, Caller

log = logging.getLogger(__name__)

ADMIN_SERVICE = "imagegen.admin.v1.AdminService"
_OUR_SERVICES: tuple[str, ...] = (
    "imagegen.billing.v1.BillingService",
    ADMIN_SERVICE,
    "imagegen.portal.v1.PortalService",
    "imagegen.payments.v1.PaymentsService",
    "imagegen.oauth.v1.OAuthService",
)

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
    Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnknownModelError, grpc.StatusCode.NOT_FOUND),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (CatalogError, grpc.StatusCode.INVALID_ARGUMENT),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
)


# The domain's reasons are the contract's, by name; built at import so that a missing one fails early.
_REASONS = {
    reason: billing_service_pb2.ErrorReason.Value(f"ERROR_REASON_{reason.name}") for reason in ErrorReason
}


def status_code(error: Exception) -> grpc.StatusCode:
    """The gRPC status of a domain error (INTERNAL for anything unexpected)."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _split(method: str) -> tuple[str, str]:
    """``/package.Service/Method`` into service and method."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def _wrap(handler: Handler, behaviour: Behaviour) -> Handler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def rich_status(error: BillingError | CatalogError) -> grpc.Status:
    """The status a domain error is answered with: its code and message, an ErrorInfo with its reason
    and metadata, and a BadRequest naming the field at fault when it is about one."""
    if isinstance(error, BillingError):
        reason, metadata = error.reason, error.metadata()
        field = error.field if isinstance(error, InvalidArgumentError) else ""
    else:
        unknown = isinstance(error, UnknownModelError)
        reason = ErrorReason.MODEL_NOT_FOUND if unknown else ErrorReason.INVALID_ARGUMENT
        metadata, field = {}, error.field or ""
    message = str(error)
    violations = (rpc_errors.FieldViolation(field, message),) if field else ()
    return rpc_errors.to_status(status_code(error), message, _REASONS[reason], metadata, violations)


class ObservingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every unary RPC of our services, logs it, and answers domain errors with their
    rich status (unexpected errors with INTERNAL and no detail)."""

    # grpc-stubs leave out the None that grpc passes along for a method no servicer has.
    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        service, method = _split(handler_call_details.method)
        if handler is None or handler.unary_unary is None or service not in _OUR_SERVICES:
            return handler
        inner: Behaviour = handler.unary_unary  # type: ignore[assignment]

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                # Set by whoever aborted; grpc-stubs do not say it is None before that.
                code = cast("grpc.StatusCode | None", context.code()) or grpc.StatusCode.UNKNOWN
                raise
            except (BillingError, CatalogError) as error:
                code = status_code(error)
                # grpc-stubs lack abort_with_status on the aio context, which grpc has since 1.38.
                await context.abort_with_status(rich_status(error))  # type: ignore[attr-defined]
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("rpc failed", extra={"service": service, "method": method})
                await context.abort(code, "internal error")
            finally:
                elapsed = time.perf_counter() - started
                metrics.RPC_REQUESTS.labels(service=service, method=method, code=code.name).inc()
                metrics.RPC_DURATION.labels(service=service, method=method).observe(elapsed)
                log.debug(
                    "rpc",
                    extra={
                        "service": service,
                        "method": method,
                        "code": code.name,
                        "ms": round(elapsed * 1e3, 2),
                    },
                )

        return _wrap(handler, observed)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses every AdminService call without ``authorization: Bearer <admin token>``."""

    def __init__(self, admin_token: str) -> None:
        self._expected = f"Bearer {admin_token}".encode()

    # grpc-stubs leave out the None that grpc passes along for a method no servicer has.
    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        service, _ = _split(handler_call_details.method)
        if handler is None or service != ADMIN_SERVICE or self._authorised(handler_call_details):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            status = rpc_errors.to_status(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid admin token",
                _REASONS[ErrorReason.INVALID_TOKEN],
            )
            await context.abort_with_status(status)  # type: ignore[attr-defined]

        return _wrap(handler, refuse)

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(presented, self._expected)
        return False


BILLING_SERVICE = "imagegen.billing.v1.BillingService"
#: Services anyone who reaches the port may call: probes (kubelet, compose, the gateway's readiness)
#: and reflection (it describes the API, which is public in this repository; it reveals no data).
OPEN_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})


PORTAL_SERVICE = "imagegen.portal.v1.PortalService"
PAYMENTS_SERVICE = "imagegen.payments.v1.PaymentsService"
OAUTH_SERVICE = "imagegen.oauth.v1.OAuthService"


def _methods(service: str, *methods: str) -> frozenset[str]:
    return frozenset(f"/{service}/{method}" for method in methods)


def _billing(*methods: str) -> frozenset[str]:
    return _methods(BILLING_SERVICE, *methods)


#: The portal's operator calls (the admin CLI's `account login-link`, `account set-role`): guarded by
#: the admin token, which the servicer checks itself, like AdminService; no service identity needed.
OPERATOR_METHODS = _methods(PORTAL_SERVICE, "CreateLoginLink", "SetAccountRole") | _methods(
    # An operator's confidential client (admin token, checked by the servicer); without the token it
    # is what the public /register endpoint does anyway (RFC 7591 dynamic registration).
    OAUTH_SERVICE,
    "RegisterClient",
)


#: Which identity may call which method. Deny by default: a method (or a whole service, such as a new
#: PortalService) that is not listed here is refused with PERMISSION_DENIED to every identity, so a
#: new RPC is closed until someone decides who needs it. AdminService is not listed: its admin token
#: guards it (AdminAuthInterceptor).
CALLER_METHODS: Mapping[Caller, frozenset[str]] = {
    # The gateway's API: bearer tokens, the catalog and prices, reservations of its jobs and their
    # status (one at a time, or all its waiting jobs at once: BatchGetReservations), the account
    # page. Not the webhook signing secrets.
    Caller.GATEWAY: _billing(
        "Authenticate",
        "ListModels",
        "Quote",
        "Reserve",
        "ReserveBatch",
        "Release",
        "SettleJob",
        "GetReservation",
        "BatchGetReservations",
        "ListReservations",
        "GetAccount",
    )
    # The account portal's pages, for the person of a session (billing checks the session and, for
    # the Admin… calls, its admin role).
    | _methods(
        PORTAL_SERVICE,
        "StartEmailSignIn",
        "CompleteEmailSignIn",
        "CompleteOidcSignIn",
        "GetSession",
        "EndSession",
        "ListTokens",
        "CreateToken",
        "RevokeToken",
        "ListLedgerEntries",
        "ListImages",
        "GetImage",
        "AdminSearchAccounts",
        "AdminGetAccount",
        "AdminGrantCredits",
        "AdminRevokeToken",
        "AdminSetAccountDisabled",
    )
    # Buying credits: checkout sessions and Stripe's (signature-checked) webhook events.
    | _methods(
        PAYMENTS_SERVICE,
        "ListCreditPacks",
        "RecordCheckoutSession",
        "FulfillCheckoutSession",
        "ClosePurchase",
        "RecordRefund",
        "RecordDispute",
        "GetPurchase",
    )
    # OAuth for MCP connectors: the authorization server's storage and the resource's token checks.
    | _methods(
        OAUTH_SERVICE,
        "RegisterClient",
        "GetClient",
        "GetConsent",
        "CreateAuthorizationCode",
        "GetAuthorizationCode",
        "ExchangeAuthorizationCode",
        "GetRefreshToken",
        "ExchangeRefreshToken",
        "VerifyAccessToken",
        "RevokeToken",
        "ListGrants",
        "RevokeGrant",
    ),
    # The webhook dispatcher: finds and settles the job of an outcome, signs with the account's secret,
    # records each attempt (and may read them back). The only identity that reads signing secrets.
    Caller.WEBHOOKS: _billing(
        "GetReservation", "SettleJob", "GetWebhookSettings", "RecordWebhookAttempt", "ListWebhookAttempts"
    ),
}


def _metadata(details: grpc.HandlerCallDetails, key: str) -> bytes | None:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value.encode() if isinstance(value, str) else value
    return None


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates the calling service (``imagegen-caller`` and ``imagegen-caller-secret``, compared in
    constant time with each secret accepted for that identity: two during a rotation) and authorises it
    per method (``CALLER_METHODS``). Refusals are UNAUTHENTICATED (``CALLER_UNAUTHENTICATED``) or
    PERMISSION_DENIED (``CALLER_NOT_PERMITTED``) with an ErrorInfo. Health and reflection stay open;
    AdminService is the admin token's."""

    def __init__(
        self,
        secrets: Mapping[Caller, Sequence[str]],
        methods: Mapping[Caller, frozenset[str]] = CALLER_METHODS,
    ) -> None:
        self._secrets = {
            caller: tuple(s.encode() for s in accepted if s) for caller, accepted in secrets.items()
        }
        self._methods = methods

    # grpc-stubs leave out the None that grpc passes along for a method no servicer has.
    async def intercept_service(  # type: ignore[override]
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        service, _ = _split(method)
        if (
            handler is None
            or service in OPEN_SERVICES
            or service == ADMIN_SERVICE
            or method in OPERATOR_METHODS
        ):
            return handler
        caller = self._authenticate(handler_call_details)
        if caller is None:
            status = rpc_errors.to_status(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid service credentials",
                _REASONS[ErrorReason.CALLER_UNAUTHENTICATED],
            )
        elif method in self._methods.get(caller, frozenset()):
            return handler
        else:
            status = rpc_errors.to_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the {caller.value} identity may not call this method",
                _REASONS[ErrorReason.CALLER_NOT_PERMITTED],
                {"caller": caller.value, "method": method},
            )
            log.warning("call refused", extra={"caller": caller.value, "method": method})

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort_with_status(status)  # type: ignore[attr-defined]

        return _wrap(handler, refuse)

    def _authenticate(self, details: grpc.HandlerCallDetails) -> Caller | None:
        name, presented = _metadata(details, CALLER_KEY), _metadata(details, SECRET_KEY)
        if name is None or presented is None:
            return None
        try:
            caller = Caller(name.decode())
        except (UnicodeDecodeError, ValueError):
            return None
        # Every accepted secret is compared (no early exit), each in constant time.
        matches = [hmac.compare_digest(presented, accepted) for accepted in self._secrets.get(caller, ())]
        return caller if any(matches) else None
