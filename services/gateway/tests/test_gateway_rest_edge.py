"""Hostile input at the REST edge, against the real app with fake parts (no lifespan): ids checked
before billing is asked, undecodable bodies answered ``400 invalid_json``, every answer documented."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import pytest

from imagegen_gateway.app import create_app
from imagegen_gateway.authentication import Authenticator, Principal
from imagegen_gateway.config import GatewaySettings
from imagegen_gateway.domain import Reservation

PRINCIPAL = Principal(account_id="acc_1", email="a@example.com", token_id="tok_1")
AUTH = {"Authorization": "Bearer igk_good"}


class Tokens:
    async def authenticate(self, token: str) -> Principal:
        return PRINCIPAL


@dataclass
class Billing:
    looked_up: list[str] = field(default_factory=list)

    async def find_reservation(self, job_id: str) -> Reservation | None:
        self.looked_up.append(job_id)
        return None


@pytest.fixture
def billing() -> Billing:
    return Billing()


@pytest.fixture
async def client(billing: Billing) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(GatewaySettings())
    app.state.gateway = SimpleNamespace(authenticator=Authenticator(Tokens(), 5.0), billing=billing)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield http


async def test_a_huge_image_id_is_refused_unread(client: httpx.AsyncClient, billing: Billing) -> None:
    response = await client.get("/api/images/" + "a" * 20_000, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"
    assert len(response.text) < 2_000  # the id is not echoed back
    assert billing.looked_up == []


@pytest.mark.parametrize("image_id", ["img_doesnotexist", "IMG_AAAAAAAAAAAAAAAAAAAA", "img_a.png", "../x"])
async def test_what_is_not_an_image_id_is_404_without_asking_billing(
    client: httpx.AsyncClient, billing: Billing, image_id: str
) -> None:
    response = await client.get(f"/api/images/{image_id}", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert billing.looked_up == []


async def test_a_well_formed_unknown_id_is_looked_up(client: httpx.AsyncClient, billing: Billing) -> None:
    image_id = "img_" + "a" * 26
    assert (await client.get(f"/api/images/{image_id}", headers=AUTH)).status_code == 404
    assert billing.looked_up == [image_id]


async def test_a_body_that_is_not_utf8_is_400_invalid_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/images/generate",
        content=b'{"model": "m", "prompt": "\xff\xfe"}',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "invalid_json",
        "message": "The body is not valid UTF-8 JSON.",
    }


async def test_every_error_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/openapi.json")).json()
    generate = document["paths"]["/api/images/generate"]["post"]["responses"]
    assert {"400", "401", "402", "409", "413", "422", "429", "500", "503"} <= set(generate)
    get_image = document["paths"]["/api/images/{image_id}"]["get"]
    assert {"401", "404", "422"} <= set(get_image["responses"])
    [image_id] = get_image["parameters"]
    assert image_id["schema"]["maxLength"] < 200


async def test_a_missing_route_answers_the_one_error_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"success": False, "error": "not_found", "message": "Not found."}
