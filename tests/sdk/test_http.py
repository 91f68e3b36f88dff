"""What the SDK cannot send: raw HTTP against the data plane."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import Gateway, httpx


def assert_error_shape(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= err.keys(), err
    assert isinstance(err["message"], str) and err["message"]
    return err


def test_invalid_json_is_400_invalid_request_error(raw: httpx.Client) -> None:
    r = raw.post(
        "/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"content-type": "application/json"},
    )
    err = assert_error_shape(r, 400)
    assert err["type"] == "invalid_request_error"


def test_unknown_path_is_404_json(raw: httpx.Client) -> None:
    r = raw.get("/v1/no-such-endpoint")
    assert_error_shape(r, 404)
    r = raw.post("/v2/chat/completions", json={"model": "gpt-4o-mini"})
    assert_error_shape(r, 404)


def test_wrong_method_is_405(raw: httpx.Client) -> None:
    r = raw.get("/v1/chat/completions")
    assert_error_shape(r, 405)


def test_client_request_id_is_echoed(raw: httpx.Client) -> None:
    rid = f"sdk-test-{uuid.uuid4().hex}"
    r = raw.get("/v1/models", headers={"x-request-id": rid})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id") == rid
    # Errors carry it too.
    r = raw.get("/v1/no-such-endpoint", headers={"x-request-id": rid})
    assert r.headers.get("x-request-id") == rid


def test_request_id_is_generated_when_absent(raw: httpx.Client) -> None:
    a = raw.get("/v1/models").headers.get("x-request-id")
    b = raw.get("/v1/models").headers.get("x-request-id")
    assert a and b and a != b


def test_missing_authorization_is_401(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    err = assert_error_shape(r, 401)
    assert err["code"] == "invalid_api_key"
