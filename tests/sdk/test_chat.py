"""Chat completions through the gateway with the official SDK: plain, streamed, usage,
streaming latency, pass-through of fields the gateway does not know, response headers."""

from __future__ import annotations

import time
from typing import Any

import openai

from conftest import MOCK_CONTENT, MockUpstream, header, marker


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_chat_completion(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=user(f"say hello {m}"))
    assert resp.object == "chat.completion"
    assert resp.model.startswith("gpt-4o-mini"), resp.model
    assert resp.id
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == MOCK_CONTENT
    assert choice.finish_reason == "stop"
    # The mock counts a prompt token per word and a completion token per word.
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == 3
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == 8

    sent = mock_upstream.find_one(m, "/v1/chat/completions")
    assert sent["method"] == "POST"
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert sent["body"]["messages"] == user(f"say hello {m}")


def test_chat_stream_deltas_concatenate_to_the_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=user(f"stream please {marker()}"), stream=True
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_CONTENT
    contents = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) == 5, "the mock streams one chunk per word"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_chat_stream_include_usage(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user(f"count my tokens {m}"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.usage is not None, "the final chunk carries usage"
    assert last.choices == []
    assert last.usage.prompt_tokens == 4
    assert last.usage.completion_tokens == 5
    assert last.usage.total_tokens == 9
    assert all(c.usage is None for c in chunks[:-1]), "only the final chunk has usage"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MOCK_CONTENT

    sent = mock_upstream.find_one(m, "/v1/chat/completions")
    assert sent["body"]["stream"] is True
    assert sent["body"]["stream_options"]["include_usage"] is True


def test_stream_first_token_arrives_before_the_upstream_finishes(client: openai.OpenAI) -> None:
    # The mock waits 400 ms between events: role, 5 words, finish, [DONE] (~2.8 s in all).
    # A gateway that buffers the stream delivers everything at the end.
    t0 = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=user(f"slowly {marker()}"),
        stream=True,
        extra_body={"mock": {"chunk_delay_ms": 400}},
    )
    arrivals: list[tuple[float, str]] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - t0, chunk.choices[0].delta.content))
    done = time.monotonic() - t0
    assert "".join(t for _, t in arrivals) == MOCK_CONTENT
    assert len(arrivals) >= 4
    first, last = arrivals[0][0], arrivals[-1][0]
    assert last - first >= 1.0, f"chunks were not streamed as they came: {arrivals}"
    assert first <= done - 1.5, f"first token at {first:.2f}s, stream ended at {done:.2f}s"


def test_unknown_and_advanced_fields_pass_through_unchanged(
    client: openai.OpenAI, mock_upstream: MockUpstream
) -> None:
    m = marker()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": f"weather in Paris? {m}"}]},
    ]
    tools = [
        {
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
    ]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {}}},
    }
    custom = {"nested": [1, 2.5, "three", None, {"deep": True}], "unicode": "héllo ✓"}
    resp = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,  # type: ignore[arg-type]
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        response_format=response_format,  # type: ignore[arg-type]
        seed=1234,
        logprobs=True,
        top_logprobs=2,
        temperature=0.3,
        extra_body={"x_vendor_extension": custom, "top_k": 40},
    )
    assert resp.choices[0].message.content == MOCK_CONTENT

    body = mock_upstream.find_one(m, "/v1/chat/completions")["body"]
    assert body["messages"] == messages
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == response_format
    assert body["seed"] == 1234
    assert body["logprobs"] is True
    assert body["top_logprobs"] == 2
    assert body["temperature"] == 0.3
    assert body["x_vendor_extension"] == custom
    assert body["top_k"] == 40


def test_with_raw_response_has_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user(f"headers {marker()}")
    )
    assert raw.status_code == 200
    rid = raw.headers.get("x-request-id")
    assert rid, f"no x-request-id in {dict(raw.headers)}"
    completion = raw.parse()
    assert completion.choices[0].message.content == MOCK_CONTENT

    again = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=user(f"headers {marker()}")
    )
    assert again.headers.get("x-request-id") not in (None, rid), "request ids must differ"


def test_upstream_gets_the_configured_key_never_the_clients(
    client: openai.OpenAI,
    restricted_client: openai.OpenAI,
    mock_upstream: MockUpstream,
    api_key: dict[str, Any],
    restricted_key: dict[str, Any],
) -> None:
    m = marker()
    client.chat.completions.create(model="gpt-4o-mini", messages=user(f"auth check {m}"))
    restricted_client.chat.completions.create(model="gpt-4o-mini", messages=user(f"auth check {m}"))
    sent = mock_upstream.find(m, "/v1/chat/completions")
    assert len(sent) == 2
    for req in sent:
        assert header(req, "authorization") == "Bearer sk-upstream-secret"
    # No request the upstream ever saw (from any test so far) carried a client key.
    everything = repr(mock_upstream.requests())
    for key in (api_key["key"], restricted_key["key"]):
        assert key not in everything
        assert key.split("-")[2] not in everything, "the key's secret part leaked upstream"


def test_a_stream_that_breaks_off_raises_in_the_sdk(client: openai.OpenAI) -> None:
    """An upstream that dies mid-stream: the SDK gets the chunks sent so far, then raises
    (the gateway ends the stream with an error event, never a clean end)."""
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"mock": {"chunks": 8, "chunk_delay_ms": 20, "drop_after": 4}},
    )
    received = []
    try:
        for chunk in stream:
            received.append(chunk)
    except openai.APIError as e:
        assert "stopped in the middle" in str(e)
    else:
        raise AssertionError(f"the stream ended cleanly after {len(received)} chunks")
    assert 1 <= len(received) < 8
