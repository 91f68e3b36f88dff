"""The response cache through the official SDK: a streamed hit replayed from the cache
parses like a live stream, and plain and streamed requests share one entry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from conftest import (
    MOCK_CONTENT,
    Gateway,
    MockUpstream,
    free_port,
    gateway_config,
    launch_gateway,
    make_client,
    marker,
)


@pytest.fixture(scope="module")
def cached_gateway(
    mock_upstream: MockUpstream, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    dead_port = free_port()
    config = gateway_config(mock_upstream, database_url, dead_port) + "cache: { enabled: true, ttl_s: 600 }\n"
    with launch_gateway(config, tmp_path_factory.mktemp("cached-gateway"), dead_port) as gw:
        yield gw


@pytest.fixture(scope="module")
def cached_client(cached_gateway: Gateway) -> Iterator[openai.OpenAI]:
    r = cached_gateway.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-cache-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    k = cached_gateway.admin("POST", f"/admin/v1/tenants/{r.json()['id']}/keys", json={"name": "cache"})
    assert k.status_code == 201, k.text
    c = make_client(cached_gateway, k.json()["key"])
    yield c
    c.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_a_streamed_hit_parses_in_the_sdk(cached_client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    first = cached_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user(f"cache {m}"), temperature=0
    )
    assert first.headers["x-tollgate-cache"] == "miss"
    answer = first.parse()

    raw = cached_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=user(f"cache {m}"),
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-tollgate-cache"] == "hit"
    chunks = list(raw.parse())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.id == answer.id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_CONTENT == answer.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].total_tokens == answer.usage.total_tokens
    assert len(mock_upstream.find(m, "/v1/chat/completions")) == 1


def test_a_streamed_miss_serves_a_plain_hit(cached_client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    stream = cached_client.chat.completions.create(
        model="gpt-4o-mini", messages=user(f"stream first {m}"), seed=7, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == MOCK_CONTENT

    raw = cached_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user(f"stream first {m}"), seed=7
    )
    assert raw.headers["x-tollgate-cache"] == "hit"
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.content == streamed
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    # Streamed again without include_usage: a hit, and no usage chunk.
    chunks = list(
        cached_client.chat.completions.create(
            model="gpt-4o-mini", messages=user(f"stream first {m}"), seed=7, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == streamed
    assert len(mock_upstream.find(m, "/v1/chat/completions")) == 1


def test_n_choices_are_cached_whole(cached_client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": user(f"two answers {m}"), "temperature": 0, "n": 2}
    first = cached_client.chat.completions.create(**kwargs)
    chunks = list(cached_client.chat.completions.create(**kwargs, stream=True))
    for choice in first.choices:
        text = "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == choice.index
        )
        assert text == choice.message.content
    assert len(mock_upstream.find(m, "/v1/chat/completions")) == 1
