"""``GET /api/account``: the caller's account, credits and tokens (never a whole token)."""

from __future__ import annotations

from fastapi import APIRouter

from imagegen_gateway import presentation
from imagegen_gateway.api.deps import Caller, GatewayDep
from imagegen_gateway.api.responses import COMMON_RESPONSES, ApiRoute
from imagegen_gateway.api.schemas import AccountResponse

router = APIRouter(prefix="/api", tags=["account"], route_class=ApiRoute)


@router.get(
    "/account",
    response_model=AccountResponse,
    operation_id="getAccount",
    summary="The caller's account",
    description=(
        "Email, credits (available and held), the default webhook, and the API tokens by label and "
        "prefix with when they were made and last used. A token's secret is never shown again."
    ),
    responses={code: doc for code, doc in COMMON_RESPONSES.items() if code != 422},
)
async def get_account(gateway: GatewayDep, principal: Caller) -> AccountResponse:
    reply = await gateway.billing.account(principal.account_id)
    webhook = await gateway.webhook_billing.webhook_settings(principal.account_id)
    return AccountResponse(success=True, account=presentation.account(reply, webhook))
