"""Errors reach the SDK as its own exception classes, in OpenAI's error shape, and never
carry an upstream secret."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from conftest import DEAD_MODEL, UPSTREAM_KEY, Gateway, make_client, marker


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_clean(e: openai.APIStatusError) -> None:
    """OpenAI's error shape, and no secret or internal detail in it."""
    # The SDK hands over the inner `error` object as `body`.
    body = e.body
    assert isinstance(body, dict), f"error body is not OpenAI's error object: {e.response.text!r}"
    assert {"message", "type", "param", "code"} <= body.keys(), body
    assert isinstance(body["message"], str) and body["message"]
    assert e.response.json()["error"] == body
    assert UPSTREAM_KEY not in e.response.text
    assert e.response.headers.get("content-type", "").startswith("application/json")


def test_wrong_key_is_authentication_error(gateway: Gateway) -> None:
    wrong = make_client(gateway, "tg-AAAAAAAAAAAA-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB")
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"
    assert_clean(e.value)
    wrong.close()


def test_garbage_key_is_authentication_error(gateway: Gateway) -> None:
    garbage = make_client(gateway, "not-a-tollgate-key")
    with pytest.raises(openai.AuthenticationError):
        garbage.models.list()
    garbage.close()


def test_restricted_key_other_model_is_permission_denied(restricted_client: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError) as e:
        restricted_client.chat.completions.create(model="restricted-model", messages=user(f"hi {marker()}"))
    assert e.value.status_code == 403
    assert_clean(e.value)
    # The same key still works for the model it is allowed.
    ok = restricted_client.chat.completions.create(model="gpt-4o-mini", messages=user(f"hi {marker()}"))
    assert ok.choices[0].message.content


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=user("hi"))
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert_clean(e.value)


def test_missing_messages_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"model": "gpt-4o-mini"}, cast_to=object)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error"
    assert_clean(e.value)


@pytest.mark.parametrize(
    "override",
    [
        {"messages": "not an array"},
        {"model": 42},
        {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"},
    ],
    ids=["messages-not-array", "model-not-string", "stream-not-bool"],
)
def test_bad_types_are_bad_request(client: openai.OpenAI, override: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), extra_body=override)
    assert e.value.status_code == 400
    assert e.value.type == "invalid_request_error"
    assert_clean(e.value)


def test_upstream_429_is_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=user(f"busy {marker()}"), extra_body={"mock": {"status": 429}}
        )
    assert e.value.status_code == 429
    assert_clean(e.value)


def test_upstream_500_is_internal_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=user(f"broken {marker()}"), extra_body={"mock": {"status": 500}}
        )
    assert e.value.status_code >= 500
    assert_clean(e.value)


def test_unreachable_upstream_is_502(client: openai.OpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=DEAD_MODEL, messages=user("anyone there?"))
    assert e.value.status_code == 502
    assert isinstance(e.value, openai.InternalServerError)
    assert_clean(e.value)
    assert f":{gateway.dead_port}" not in e.value.response.text, "upstream address leaked"


def test_upstream_slower_than_deployment_timeout_is_504(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=user(f"slow {marker()}"), extra_body={"mock": {"delay_ms": 3000}}
        )
    elapsed = time.monotonic() - t0
    assert e.value.status_code == 504
    assert_clean(e.value)
    assert elapsed >= 1.5, f"answered after {elapsed:.2f}s, before the 2 s deployment timeout"


def test_errors_on_streams_are_raised_before_the_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=user(f"busy stream {marker()}"),
            stream=True,
            extra_body={"mock": {"status": 429}},
        )
