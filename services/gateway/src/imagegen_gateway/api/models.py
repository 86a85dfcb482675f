"""``GET /api/models``: the catalog with prices, the same model objects as MCP's ``list_models``."""

from __future__ import annotations

from fastapi import APIRouter

from imagegen_gateway.api.deps import Caller, GatewayDep
from imagegen_gateway.api.responses import COMMON_RESPONSES, ApiRoute
from imagegen_gateway.api.schemas import ModelInfo, ModelsResponse
from imagegen_gateway.presentation import model_view

router = APIRouter(prefix="/api", tags=["models"], route_class=ApiRoute)


@router.get(
    "/models",
    response_model=ModelsResponse,
    operation_id="listModels",
    summary="Models, sizes and prices",
    description=(
        "Every model with its capabilities, the sizes it takes, its price rule and the credits of a "
        "1024x1024 image; `served_by` says which provider the running generators use."
    ),
    responses={code: doc for code, doc in COMMON_RESPONSES.items() if code != 422},
)
async def list_models(gateway: GatewayDep, principal: Caller) -> ModelsResponse:
    listing = await gateway.catalog.listing()
    served_by = await gateway.generators.served_by()
    return ModelsResponse(
        success=True,
        models=[ModelInfo.model_validate(model_view(model, served_by)) for model in listing.models],
        default_model=listing.default_model,
    )
