"""The input of a Replicate prediction for a catalog model: a pure function of the model and the request.

The catalog's ``[replicate]`` table says how each model takes its size (a listed aspect ratio, or
width and height within ``max_side`` rounded to ``multiple``), its input images (parameter name, a
list or a single URL), its negative prompt and its fixed inputs.
"""

from __future__ import annotations

import math
from typing import Any

from imagegen_common.catalog import Model, ReplicateMapping
from imagegen_generator.providers.base import GenerationRequest


def nearest_aspect_ratio(width: int, height: int, ratios: tuple[str, ...]) -> str:
    """The listed ratio ("16:9") closest to width:height, compared on a log scale (so 2:1 and 1:2 are
    equally far from 1:1); the first listed wins a tie."""
    if not ratios:
        raise ValueError("the model lists no aspect ratios")
    wanted = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return abs(math.log(int(w) / int(h)) - wanted)

    return min(ratios, key=distance)


def scaled_size(width: int, height: int, max_side: int, multiple: int) -> tuple[int, int]:
    """width x height scaled down (never up) to fit max_side, each side rounded to the nearest multiple
    that still fits."""
    scale = min(1.0, max_side / max(width, height))
    step = max(1, multiple)

    def fit(side: int) -> int:
        rounded = max(step, int(side * scale / step + 0.5) * step)  # half up, unlike round()
        return rounded if rounded <= max_side else (max_side // step) * step

    return fit(width), fit(height)


def size_input(mapping: ReplicateMapping, width: int, height: int) -> dict[str, Any]:
    if mapping.size == "aspect_ratio":
        return {"aspect_ratio": nearest_aspect_ratio(width, height, mapping.aspect_ratios)}
    w, h = scaled_size(width, height, mapping.max_side, mapping.multiple)
    sized: dict[str, Any] = {**mapping.size_input, "width": w, "height": h}
    if mapping.size == "aspect_ratio_custom":
        sized["aspect_ratio"] = "custom"
    return sized


def build_input(model: Model, request: GenerationRequest) -> dict[str, Any]:
    """The ``input`` object of the prediction (input images as data URIs)."""
    mapping = model.replicate
    payload: dict[str, Any] = dict(mapping.input)
    payload["prompt"] = request.prompt
    payload.update(size_input(mapping, request.width, request.height))
    if request.negative_prompt and mapping.negative_prompt:
        payload[mapping.negative_prompt] = request.negative_prompt
    if request.input_images:
        if not mapping.image_input:
            raise ValueError(f"{model.key} takes no input image")
        uris = [image.data_uri() for image in request.input_images]
        payload[mapping.image_input] = uris if mapping.image_input_list else uris[0]
    return payload
