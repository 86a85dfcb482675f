"""The live generator replicas, as they announce themselves in NATS KV: which provider serves the models."""

from __future__ import annotations

import json
import logging
import time

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from imagegen_common import nats_names
from imagegen_common.jetstream import ensure_key_value

log = logging.getLogger(__name__)

CACHE_SECONDS = 10.0
NO_GENERATOR = "none (no generator running)"


class GeneratorRegistry:
    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        self.js = js
        self.replicas = replicas
        self._kv: KeyValue | None = None
        self._cached: tuple[str, float] | None = None

    async def served_by(self) -> str:
        """``replicate``, ``local``, ``mixed`` (replicas disagree) or that no generator runs."""
        now = time.monotonic()
        if self._cached is not None and self._cached[1] > now:
            return self._cached[0]
        providers = await self._providers()
        answer = NO_GENERATOR if not providers else providers.pop() if len(providers) == 1 else "mixed"
        self._cached = (answer, now + CACHE_SECONDS)
        return answer

    async def _providers(self) -> set[str]:
        if self._kv is None:
            self._kv = await ensure_key_value(self.js, nats_names.generators_kv_config(self.replicas))
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return set()
        providers = set()
        for key in keys:
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # the replica stopped (or its entry expired) since keys()
                continue
            if entry.value:
                providers.add(str(json.loads(entry.value).get("provider", "unknown")))
        return providers
