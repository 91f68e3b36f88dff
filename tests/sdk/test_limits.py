"""Limits reach the SDK as RateLimitError: `rate_limit_exceeded` for rates, `insufficient_quota`
for budgets, with `retry-after` and OpenAI's `x-ratelimit-*` headers."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from conftest import Gateway, make_client


def tenant_on_plan(gateway: Gateway, limits: dict[str, Any]) -> str:
    """A plan with `limits`, a tenant on it, and a key; returns the plaintext key."""
    plan = f"sdk-{uuid.uuid4().hex[:12]}"
    r = gateway.admin("PUT", f"/admin/v1/plans/{plan}", json=limits)
    assert r.status_code == 200, r.text
    r = gateway.admin("POST", "/admin/v1/tenants", json={"name": f"t-{plan}", "plan": plan})
    assert r.status_code == 201, r.text
    tenant = r.json()
    r = gateway.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "k"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_rate_limit_raises_rate_limit_error(gateway: Gateway) -> None:
    client = make_client(gateway, tenant_on_plan(gateway, {"rpm": 1}))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user("hi"))
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    client.close()


def test_budget_raises_insufficient_quota(gateway: Gateway) -> None:
    client = make_client(gateway, tenant_on_plan(gateway, {"monthly_budget_usd": "0"}))
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    assert e.value.code == "insufficient_quota"
    assert e.value.type == "insufficient_quota"
    client.close()
