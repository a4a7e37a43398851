"""API key: checked before routing and body parsing; the schema and docs pages follow it (no model needed)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from chunkcache.api.app import create_app
from chunkcache.api.config import ServerConfig

KEY = "unit-key-19c2"


@pytest.fixture(scope="module")
def app_client():
    return TestClient(create_app(ServerConfig(api_key=KEY)))  # no `with`: the model service never starts


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/metrics", "/chunks/abc"])
def test_api_docs_and_schema_need_the_key(app_client, path) -> None:
    r = app_client.get(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert app_client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_api_docs_open_with_the_key(app_client) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    schema = app_client.get("/openapi.json", headers=auth)
    assert schema.status_code == 200 and "/generate_with_chunks" in schema.json()["paths"]
    assert app_client.get("/docs", headers=auth).status_code == 200


def test_api_auth_before_body_parsing(app_client) -> None:
    r = app_client.post("/generate_with_chunks", content=b"not json {", headers={"content-type": "application/json"})
    assert r.status_code == 401 and "authorization" in r.json()["detail"]
    r = app_client.post("/generate_with_chunks", content=b"not json {",
                        headers={"content-type": "application/json", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422  # with the key, the body is parsed and refused
