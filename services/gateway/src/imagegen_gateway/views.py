"""How models and images look to clients, the same for MCP and REST."""

from __future__ import annotations

from typing import Any

from imagegen.billing.v1 import resources_pb2


def model_view(model: resources_pb2.Model, served_by: str) -> dict[str, Any]:
    """Every documented field of a model, plus its sizes, prices and who serves it."""
    dims = model.dimensions
    return {
        "key": model.key,
        "name": model.name,
        "description": model.description,
        "provider": model.provider,
        "provider_model": model.provider_model,
        "quality_rating": model.quality_rating,
        "pricing_rating": model.pricing_rating,
        "supports_text_to_image": model.supports_text_to_image,
        "supports_image_to_image": model.supports_image_to_image,
        "max_input_images": model.max_input_images,
        "supported_dimensions": {
            "min_width": dims.min_width,
            "max_width": dims.max_width,
            "min_height": dims.min_height,
            "max_height": dims.max_height,
            "step": dims.step,
        },
        "credits_for_1024x1024": model.default_cost,
        "price_rule": {
            "credits_per_megapixel": model.price_rule.credits_per_megapixel,
            "minimum_credits": model.price_rule.minimum_credits,
            "description": model.price_rule.description,
        },
        "is_default": model.is_default,
        "served_by": served_by,
    }
