"""The `anthropic` and `azure` providers through the official OpenAI SDK: an Anthropic-backed
model answers plain, streamed and tool-calling requests in OpenAI's format (the mock speaks
Anthropic's Messages API), its errors raise the SDK's own exception classes, and an
Azure-backed model reaches Azure's deployment URLs with the `api-key` header.

These models run on a gateway of their own (same mock upstream, its own database), so the
shared session gateway's model list stays as the other tests expect it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from conftest import (
    MOCK_CONTENT,
    Gateway,
    MockUpstream,
    _q,
    fresh_database,
    header,
    launch_gateway,
    make_client,
    marker,
)

ANTHROPIC_KEY = "sk-ant-sdk-upstream"
AZURE_KEY = "azure-sdk-upstream"
AZURE_DEPLOYMENT = "sdk-gpt4o"
AZURE_API_VERSION = "2024-10-21"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def script(**knobs: Any) -> dict[str, str]:
    """A system message that scripts the mock's Anthropic answer (the gateway drops
    unknown body fields for Anthropic, so the knobs travel in the system prompt)."""
    return {"role": "system", "content": "mock:" + json.dumps(knobs)}


@pytest.fixture(scope="module")
def providers_gateway(
    mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with fresh_database("tg_sdk_providers") as database_url:
        config = "".join(
            [
                "listen: 127.0.0.1:0\n",
                "admin_listen: 127.0.0.1:0\n",
                f"database_url: {_q(database_url)}\n",
                'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
                "models:\n",
                "  - name: claude\n",
                "    deployments:\n",
                f"      - {{ provider: anthropic, base_url: {_q(mock_upstream.base_url)}, "
                f"api_key: {_q(ANTHROPIC_KEY)}, model: claude-sonnet-4-5, timeout_s: 5 }}\n",
                "  - name: azure-gpt\n",
                "    deployments:\n",
                f"      - {{ provider: azure, base_url: {_q(mock_upstream.url)}, api_key: {_q(AZURE_KEY)}, "
                f"deployment: {AZURE_DEPLOYMENT}, api_version: {_q(AZURE_API_VERSION)}, timeout_s: 5 }}\n",
            ]
        )
        with launch_gateway(config, tmp_path_factory.mktemp("providers-gateway")) as gw:
            yield gw


@pytest.fixture(scope="module")
def pclient(providers_gateway: Gateway) -> Iterator[openai.OpenAI]:
    gw = providers_gateway
    r = gw.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-providers-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    r = gw.admin("POST", f"/admin/v1/tenants/{r.json()['id']}/keys", json={"name": "providers"})
    assert r.status_code == 201, r.text
    c = make_client(gw, r.json()["key"])
    yield c
    c.close()


def test_anthropic_chat(pclient: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    raw = pclient.chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"say hello {m}"},
        ],
        temperature=0,
        seed=7,
    )
    assert raw.headers["x-tollgate-deployment"] == "claude-sonnet-4-5"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "claude-sonnet-4-5"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == MOCK_CONTENT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    # One token per word: "You are terse." + "say hello <marker>"; the answer has 5 words.
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (6, 5, 11)

    sent = mock_upstream.find_one(m, "/v1/messages")
    assert header(sent, "x-api-key") == ANTHROPIC_KEY
    assert header(sent, "anthropic-version") == "2023-06-01"
    assert header(sent, "authorization") is None
    assert sent["body"]["system"] == "You are terse."
    assert sent["body"]["messages"] == [{"role": "user", "content": f"say hello {m}"}]
    assert sent["body"]["max_tokens"] == 4096
    assert sent["body"]["temperature"] == 0
    assert "seed" not in sent["body"]


def test_anthropic_stream_with_usage(pclient: openai.OpenAI) -> None:
    stream = pclient.chat.completions.create(
        model="claude",
        messages=[script(cached_tokens=2), {"role": "user", "content": f"stream please {marker()}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_CONTENT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    # 3 input words plus 2 tokens read from Anthropic's prompt cache.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 5)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


def test_anthropic_tools_round_trip(pclient: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    question = {"role": "user", "content": f"Weather in Paris? {marker()}"}
    calls = [{"name": "get_weather", "input": {"city": "Paris"}}]
    resp = pclient.chat.completions.create(
        model="claude",
        messages=[script(tool_calls=calls), question],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # Streamed, through the SDK's own stream helper, which accumulates tool-call deltas.
    with pclient.chat.completions.stream(
        model="claude",
        messages=[script(tool_calls=calls, content="Checking."), question],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert streamed.message.content == "Checking."
    assert streamed.message.tool_calls and streamed.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(streamed.message.tool_calls[0].function.arguments) == {"city": "Paris"}

    # The tool's answer goes back; the mock refuses results that answer no tool use.
    m = marker()
    resp = pclient.chat.completions.create(
        model="claude",
        messages=[
            question,  # type: ignore[list-item]
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": f"18 C and sunny {m}"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert resp.choices[0].message.content == MOCK_CONTENT
    sent = mock_upstream.find_one(m, "/v1/messages")
    assert sent["body"]["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["body"]["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id, "content": f"18 C and sunny {m}"}
    ]


def test_anthropic_image(pclient: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    resp = pclient.chat.completions.create(
        model="claude",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"what is this? {m}"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                ],
            }
        ],
    )
    assert resp.choices[0].message.content == MOCK_CONTENT
    sent = mock_upstream.find_one(m, "/v1/messages")
    assert sent["body"]["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": png},
    }


def test_anthropic_errors_raise_sdk_exceptions(pclient: openai.OpenAI) -> None:
    hi = {"role": "user", "content": "hi"}
    with pytest.raises(openai.RateLimitError) as rate:
        pclient.chat.completions.create(model="claude", messages=[script(status=429), hi])  # type: ignore[list-item]
    assert rate.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as overloaded:
        pclient.chat.completions.create(model="claude", messages=[script(status=529), hi])  # type: ignore[list-item]
    assert overloaded.value.status_code == 503
    with pytest.raises(openai.BadRequestError) as unsupported:
        pclient.embeddings.create(model="claude", input="x")
    assert unsupported.value.code == "unsupported_endpoint"
    # An Anthropic error event mid-stream: the SDK raises instead of ending cleanly.
    stream = pclient.chat.completions.create(
        model="claude", messages=[script(error_after=4), hi], stream=True  # type: ignore[list-item]
    )
    with pytest.raises(openai.APIError) as mid:
        for _ in stream:
            pass
    assert "Overloaded" in str(mid.value)


def test_azure_chat(pclient: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = pclient.chat.completions.create(model="azure-gpt", messages=[{"role": "user", "content": f"hi {m}"}])
    assert resp.choices[0].message.content == MOCK_CONTENT
    sent = mock_upstream.find_one(m, f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions")
    assert sent["path"].endswith(f"?api-version={AZURE_API_VERSION}")
    assert header(sent, "api-key") == AZURE_KEY
    assert header(sent, "authorization") is None
    with pytest.raises(openai.BadRequestError) as unsupported:
        pclient.moderations.create(model="azure-gpt", input="hello")
    assert unsupported.value.code == "unsupported_endpoint"
