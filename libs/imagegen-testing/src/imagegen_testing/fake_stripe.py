"""A fake Stripe: a real HTTP server (starlette + uvicorn in a thread, on a free port) that speaks the
part of Stripe's API the official ``stripe`` library uses for Checkout, so the real client can be
pointed at it (``base_addresses={"api": fake.url}``, or ``IMAGEGEN_STRIPE_API_BASE``).

API: ``POST /v1/checkout/sessions`` (form-encoded, as the library sends it) and
``GET /v1/checkout/sessions/{id}`` (``expand[]=line_items`` adds the line items), with the secret key
checked. Besides the API, a hosted "checkout page" at ``session.url``: its Pay button marks the
session paid, sends the signed ``checkout.session.completed`` webhook to ``webhook_url`` (when set)
and redirects to the session's success URL, as Stripe does.

Tests build other events with ``event(...)`` and sign them with ``sign(...)`` (Stripe's scheme:
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from imagegen_testing.net import free_port

DEFAULT_SECRET_KEY = "sk_test_fake_" + "k" * 24
DEFAULT_WEBHOOK_SECRET = "whsec_fake_" + "w" * 24


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header of ``payload`` with an endpoint secret."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(event_type: str, obj: dict[str, Any], event_id: str = "") -> bytes:
    """A webhook event (a snapshot event as Stripe sends it) with ``obj`` as ``data.object``."""
    return json.dumps(
        {
            "id": event_id or "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": "2025-01-27.acacia",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": event_type,
            "data": {"object": obj},
        }
    ).encode()


def _nested(form: list[tuple[str, str]]) -> dict[str, Any]:
    """``line_items[0][price_data][currency]=usd`` → nested dicts (lists stay dicts keyed "0")."""
    out: dict[str, Any] = {}
    for key, value in form:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class FakeSession:
    params: dict[str, Any]
    id: str = field(default_factory=lambda: "cs_test_" + secrets.token_hex(16))
    payment_status: str = "unpaid"
    status: str = "open"
    payment_intent: str | None = None

    def line_item(self) -> dict[str, Any]:
        item = self.params.get("line_items", {}).get("0", {})
        data = item.get("price_data", {})
        price_id = item.get("price", "price_" + self.id[-12:])
        amount = int(data.get("unit_amount", 0))
        quantity = int(item.get("quantity", 1))
        return {
            "id": "li_" + self.id[-12:],
            "object": "item",
            "amount_total": amount * quantity,
            "amount_subtotal": amount * quantity,
            "currency": data.get("currency", "usd"),
            "description": data.get("product_data", {}).get("name", ""),
            "quantity": quantity,
            "price": {
                "id": price_id,
                "object": "price",
                "unit_amount": amount,
                "currency": data.get("currency"),
            },
        }


class FakeStripe:
    def __init__(
        self, secret_key: str = DEFAULT_SECRET_KEY, webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    ) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.port = free_port()
        #: Where the checkout page's Pay button sends ``checkout.session.completed`` (the gateway's
        #: ``/webhooks/stripe``); unset: no webhook.
        self.webhook_url = ""
        #: Seconds after the redirect to the success page that the webhook goes out (None: before the
        #: redirect), as when Stripe's event arrives after the person is back.
        self.webhook_delay_seconds: float | None = None
        self.sessions: dict[str, FakeSession] = {}
        self.requests: list[tuple[str, str]] = []
        self.webhook_answers: list[int] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- what tests use -----------------------------------------------------------------------

    def session(self, session_id: str) -> FakeSession:
        with self._lock:
            return self.sessions[session_id]

    def pay(self, session_id: str, *, paid: bool = True) -> FakeSession:
        """Completes a session: paid, or (``paid=False``) waiting for a delayed payment method."""
        with self._lock:
            found = self.sessions[session_id]
            found.status = "complete"
            found.payment_status = "paid" if paid else "unpaid"
            found.payment_intent = found.payment_intent or "pi_test_" + secrets.token_hex(12)
            return found

    def session_object(self, session_id: str, *, line_items: bool = False) -> dict[str, Any]:
        with self._lock:
            found = self.sessions[session_id]
            params = found.params
            item = found.line_item()
            obj: dict[str, Any] = {
                "id": found.id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "status": found.status,
                "payment_status": found.payment_status,
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "amount_total": item["amount_total"],
                "currency": item["currency"],
                "payment_intent": found.payment_intent,
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "url": f"{self.url}/checkout/{found.id}" if found.status == "open" else None,
                "livemode": False,
            }
            if line_items:
                obj["line_items"] = {
                    "object": "list",
                    "data": [item],
                    "has_more": False,
                    "url": f"/v1/checkout/sessions/{found.id}/line_items",
                }
            return obj

    def charge(self, session_id: str, amount_refunded: int = 0) -> dict[str, Any]:
        """The charge of a paid session, as a ``charge.refunded`` event carries it."""
        found = self.session(session_id)
        amount = found.line_item()["amount_total"]
        return {
            "id": "ch_" + (found.payment_intent or "")[8:],
            "object": "charge",
            "amount": amount,
            "amount_refunded": amount_refunded,
            "currency": "usd",
            "payment_intent": found.payment_intent,
            "refunded": amount_refunded >= amount,
        }

    def dispute(self, session_id: str, amount: int, status: str = "needs_response") -> dict[str, Any]:
        charge = self.charge(session_id)
        return {
            "id": "dp_" + charge["id"][3:],
            "object": "dispute",
            "amount": amount,
            "charge": charge["id"],
            "payment_intent": charge["payment_intent"],
            "status": status,
        }

    def signed(self, payload: bytes, timestamp: int | None = None) -> dict[str, str]:
        return {"Stripe-Signature": sign(payload, self.webhook_secret, timestamp)}

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeStripe:
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-stripe", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Stripe did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP side ------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/checkout/sessions", self._create, methods=["POST"]),
                Route("/v1/checkout/sessions/{id}", self._retrieve, methods=["GET"]),
                Route("/checkout/{id}", self._page, methods=["GET"]),
                Route("/checkout/{id}/pay", self._pay, methods=["POST"]),
            ]
        )

    async def _send_completed(self, session_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        payload = event("checkout.session.completed", self.session_object(session_id))
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                self.webhook_url,
                content=payload,
                headers={**self.signed(payload), "Content-Type": "application/json"},
            )
        with self._lock:
            self.webhook_answers.append(answer.status_code)

    def _refused(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            error = {"type": "invalid_request_error", "message": "Invalid API Key provided"}
            return JSONResponse({"error": error}, status_code=401)
        return None

    async def _create(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(("POST", request.url.path))
        if (refused := self._refused(request)) is not None:
            return refused
        params = _nested(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        created = FakeSession(params)
        with self._lock:
            self.sessions[created.id] = created
        return JSONResponse(self.session_object(created.id))

    async def _retrieve(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(("GET", request.url.path))
        if (refused := self._refused(request)) is not None:
            return refused
        session_id = request.path_params["id"]
        if session_id not in self.sessions:
            error = {"type": "invalid_request_error", "message": f"No such checkout.session: '{session_id}'"}
            return JSONResponse({"error": error}, status_code=404)
        expand = [v for k, v in request.query_params.multi_items() if k.startswith("expand")]
        return JSONResponse(self.session_object(session_id, line_items="line_items" in expand))

    async def _page(self, request: Request) -> Response:
        session_id = request.path_params["id"]
        if session_id not in self.sessions:
            return HTMLResponse("<h1>No such session</h1>", status_code=404)
        item = self.session(session_id).line_item()
        body = (
            "<!doctype html><html lang='en'><head><title>Fake Stripe Checkout</title></head><body><main>"
            f"<h1>Pay {item['amount_total'] / 100:.2f} {html.escape(str(item['currency'])).upper()}</h1>"
            f"<p>{html.escape(str(item['description']))}</p>"
            f"<form method='post' action='/checkout/{html.escape(session_id)}/pay'>"
            "<button type='submit'>Pay</button></form></main></body></html>"
        )
        return HTMLResponse(body)

    async def _pay(self, request: Request) -> Response:
        session_id = request.path_params["id"]
        if session_id not in self.sessions:
            return HTMLResponse("<h1>No such session</h1>", status_code=404)
        self.pay(session_id)
        if self.webhook_url:
            if self.webhook_delay_seconds is None:
                await self._send_completed(session_id, 0.0)
            else:
                task = asyncio.create_task(self._send_completed(session_id, self.webhook_delay_seconds))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        success = str(self.session(session_id).params.get("success_url", "/"))
        return RedirectResponse(success.replace("{CHECKOUT_SESSION_ID}", session_id), status_code=303)
