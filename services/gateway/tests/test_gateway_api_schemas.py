"""The REST schemas agree with the views they describe."""

from __future__ import annotations

from imagegen.billing.v1 import resources_pb2
from imagegen_gateway import wire
from imagegen_gateway.api.schemas import ModelInfo
from imagegen_gateway.presentation import model_view


def test_the_model_schema_has_every_field_of_the_shared_model_view() -> None:
    model = wire.model(resources_pb2.Model(key="m", quality_rating=3, pricing_rating=4))
    view = model_view(model, "local")
    assert set(ModelInfo.model_fields) == set(view)
    assert ModelInfo.model_validate(view).model_dump() == view
