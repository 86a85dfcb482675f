"""What a provider is given and returns; no transport here."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Protocol

from imagegen_common.catalog import Model


@dataclass(frozen=True, slots=True)
class InputImage:
    """An input image, already fetched and checked."""

    data: bytes
    mime_type: str

    def data_uri(self) -> str:
        """Base64 of up to tens of MB: CPU work, for a worker thread rather than the event loop."""
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    job_id: str
    model: Model
    prompt: str
    width: int
    height: int
    negative_prompt: str = ""
    input_images: tuple[InputImage, ...] = field(default_factory=tuple)
    #: When the job must be done (seconds since the epoch); None for no deadline.
    deadline: float | None = None
    #: The provider's model the job names (``owner/name`` or ``owner/name:version``); empty for the
    #: catalog's. The catalog model still says how the input is built.
    provider_model: str = ""


@dataclass(frozen=True, slots=True)
class ProviderOutput:
    """The provider's image, in whatever size and format it made it."""

    data: bytes
    mime_type: str = ""


class Provider(Protocol):
    #: Metric label: "replicate" or "local".
    name: str

    async def generate(self, request: GenerationRequest) -> ProviderOutput:
        """Makes one image. Raises errors.JobError subclasses; a cancelled call cleans up upstream."""
        ...

    async def aclose(self) -> None: ...
