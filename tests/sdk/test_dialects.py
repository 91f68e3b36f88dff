"""Client dialects, on SQLite and Postgres: the official Anthropic Python SDK against the
gateway's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), and the official
OpenAI SDK against its Responses API (`/v1/responses`: native to an `openai` deployment,
bridged through chat to an `anthropic` one).

- To an `anthropic` deployment the body goes byte for byte but `model` (cache_control,
  thinking, tools intact), with the deployment's key, `anthropic-version` and the client's
  `anthropic-beta`; the answer and the stream come back as Anthropic sent them.
- To an `openai` deployment the call is translated to chat completions and back, streams
  included; a server tool there is a 400 naming the field.
- Both are metered with Anthropic's counts (input = input + cache reads + cache writes),
  and every error (keys, models, quotas, upstream failures) is in Anthropic's shape, so the
  SDK raises its own exception classes.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import (
    MOCK_CONTENT,
    UPSTREAM_KEY,
    Gateway,
    MockUpstream,
    _q,
    fresh_database,
    httpx,
    header,
    launch_gateway,
    make_client,
    marker,
    require_env,
)

ANTHROPIC_KEY = "sk-ant-dialects-upstream"
BETA = "extended-cache-ttl-2025-04-11"


def dialects_config(mock: MockUpstream, database_url: str) -> str:
    claude = (
        f"provider: anthropic, base_url: {_q(mock.base_url)}, api_key: {_q(ANTHROPIC_KEY)}, "
        "model: claude-sonnet-4-5, timeout_s: 5"
    )
    gpt = f"provider: openai, base_url: {_q(mock.base_url)}, api_key: {_q(UPSTREAM_KEY)}, model: gpt-4o-mini, timeout_s: 5"
    return "".join(
        [
            "listen: 127.0.0.1:0\n",
            "admin_listen: 127.0.0.1:0\n",
            f"database_url: {_q(database_url)}\n",
            'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
            "meter: { flush_interval_ms: 100 }\n",
            "models:\n",
            f"  - {{ name: claude, deployments: [ {{ {claude} }} ] }}\n",
            f"  - {{ name: gpt, deployments: [ {{ {gpt} }} ] }}\n",
            # Two deployments: a follow-up must go where its first response was made.
            f"  - {{ name: gpt-pair, deployments: [ {{ {gpt}, name: pair-a }}, {{ {gpt}, name: pair-b }} ] }}\n",
            "prices:\n",
            "  claude: { input: 3, output: 15 }\n",
            "  gpt: { input: 1, output: 2 }\n",
            "cache: { enabled: true, ttl_s: 600 }\n",
        ]
    )


@contextlib.contextmanager
def store_url(store: str, workdir: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite://{workdir / 'tollgate.db'}"
    else:
        with fresh_database("tg_sdk_dialects") as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp(f"dialects-{request.param}")
    with store_url(request.param, workdir) as database_url:
        with launch_gateway(dialects_config(mock_upstream, database_url), workdir) as g:
            yield g


def new_key(gw: Gateway, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"sdk-dialects-{uuid.uuid4().hex[:8]}"}
    if plan is not None:
        name = f"sdk-{uuid.uuid4().hex[:12]}"
        r = gw.admin("PUT", f"/admin/v1/plans/{name}", json=plan)
        assert r.status_code == 200, r.text
        body["plan"] = name
    r = gw.admin("POST", "/admin/v1/tenants", json=body)
    assert r.status_code == 201, r.text
    tenant = r.json()
    r = gw.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "dialects"})
    assert r.status_code == 201, r.text
    return {"tenant": tenant["id"], **r.json()}


def claude_client(gw: Gateway, key: str, **kwargs: Any) -> anthropic.Anthropic:
    # The SDK appends /v1/messages to the base URL.
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=30, **kwargs)


@pytest.fixture()
def key(gw: Gateway) -> dict[str, Any]:
    return new_key(gw)


@pytest.fixture()
def client(gw: Gateway, key: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    c = claude_client(gw, key["key"])
    yield c
    c.close()


def script(**knobs: Any) -> str:
    """A system text that scripts the mock's Anthropic answer."""
    return "mock:" + json.dumps(knobs)


def usage_rows(gw: Gateway, tenant: str, expect: int) -> dict[str, Any]:
    """The tenant's usage per model, once `expect` requests are recorded."""
    deadline = time.monotonic() + 20
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = gw.admin("GET", f"/admin/v1/usage?tenant={tenant}&group_by=model")
        assert r.status_code == 200, r.text
        rows = {row["group"]: row for row in r.json()["data"]}
        if sum(row["requests"] for row in rows.values()) >= expect:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"usage not recorded: {rows}")


# ---- to an Anthropic deployment: native ------------------------------------------------


def test_create_is_forwarded_natively(
    gw: Gateway, client: anthropic.Anthropic, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    system = [
        {"type": "text", "text": script(cached_tokens=3, cache_creation_tokens=2, prompt_tokens=9)},
        {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": f"say hello {m}", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    raw = client.messages.with_raw_response.create(
        model="claude",
        max_tokens=2000,
        system=system,
        messages=messages,
        thinking=thinking,
        metadata={"user_id": "u-1"},
        extra_headers={"anthropic-beta": BETA},
    )
    assert raw.headers["x-tollgate-deployment"] == "claude-sonnet-4-5"
    msg = raw.parse()
    assert msg.type == "message"
    assert msg.content[0].type == "text" and msg.content[0].text == MOCK_CONTENT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 9
    assert msg.usage.cache_read_input_tokens == 3
    assert msg.usage.cache_creation_input_tokens == 2
    # Byte for byte but the model: cache_control (with ttl), thinking and metadata intact.
    sent = mock_upstream.find_one(m, "/v1/messages")
    assert sent["body"] == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 2000,
        "system": system,
        "messages": messages,
        "thinking": thinking,
        "metadata": {"user_id": "u-1"},
    }
    assert header(sent, "x-api-key") == ANTHROPIC_KEY
    assert header(sent, "anthropic-version") == "2023-06-01"
    assert header(sent, "anthropic-beta") == BETA
    assert header(sent, "authorization") is None
    # Metered with Anthropic's counts: input = 9 + 3 cache reads + 2 cache writes.
    row = usage_rows(gw, key["tenant"], 1)["claude"]
    assert row["input_tokens"] == 14
    assert row["output_tokens"] == msg.usage.output_tokens
    assert raw.headers["x-tollgate-cost-usd"]


def test_stream_relays_anthropic_events(
    gw: Gateway, client: anthropic.Anthropic, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    with client.messages.stream(
        model="claude",
        max_tokens=200,
        system=script(content="one two three four", prompt_tokens=11),
        messages=[{"role": "user", "content": f"count {m}"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 11
    assert final.usage.output_tokens == 4
    assert mock_upstream.find_one(m, "/v1/messages")["body"]["stream"] is True
    row = usage_rows(gw, key["tenant"], 1)["claude"]
    assert (row["input_tokens"], row["output_tokens"]) == (11, 4)


def test_tools_pass_through_natively(client: anthropic.Anthropic, mock_upstream: MockUpstream) -> None:
    m = marker()
    tools = [
        {
            "name": "get_weather",
            "description": f"Weather {m}",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    msg = client.messages.create(
        model="claude",
        max_tokens=200,
        system=script(tool_calls=[{"name": "get_weather", "input": {"city": "Paris"}}]),
        tools=tools,
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert msg.stop_reason == "tool_use"
    use = next(b for b in msg.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert mock_upstream.find_one(m, "/v1/messages")["body"]["tools"] == tools


def test_count_tokens(client: anthropic.Anthropic, mock_upstream: MockUpstream) -> None:
    m = marker()
    native = client.messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": f"one two three {m}"}]
    )
    assert native.input_tokens == 4  # the mock counts words
    assert mock_upstream.find_one(m, "/v1/messages/count_tokens")["body"]["model"] == "claude-sonnet-4-5"
    bridged = client.messages.count_tokens(
        model="gpt", system="Be terse.", messages=[{"role": "user", "content": "one two three"}]
    )
    assert bridged.input_tokens > 3


# ---- to an OpenAI deployment: translated ------------------------------------------------


def test_create_through_chat(
    gw: Gateway, client: anthropic.Anthropic, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    raw = client.messages.with_raw_response.create(
        model="gpt",
        max_tokens=300,
        system="Be terse.",
        stop_sequences=["END"],
        messages=[{"role": "user", "content": [{"type": "text", "text": f"say hi {m}"}]}],
    )
    assert raw.headers["x-tollgate-deployment"] == "gpt-4o-mini"
    msg = raw.parse()
    assert msg.model == "gpt"
    assert msg.content[0].text == MOCK_CONTENT
    assert msg.stop_reason == "end_turn"
    sent = mock_upstream.find_one(m, "/v1/chat/completions")["body"]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": f"say hi {m}"},
    ]
    assert sent["max_completion_tokens"] == 300 and sent["stop"] == ["END"]
    row = usage_rows(gw, key["tenant"], 1)["gpt"]
    assert (row["input_tokens"], row["output_tokens"]) == (
        msg.usage.input_tokens,
        msg.usage.output_tokens,
    )
    assert row["output_tokens"] > 0


def test_stream_through_chat(
    gw: Gateway, client: anthropic.Anthropic, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    with client.messages.stream(
        model="gpt", max_tokens=100, messages=[{"role": "user", "content": f"hello {m}"}]
    ) as stream:
        events = []
        for event in stream:
            events.append(event.type)
        final = stream.get_final_message()
    assert final.content[0].text == MOCK_CONTENT
    assert final.stop_reason == "end_turn"
    assert events[0] == "message_start" and "content_block_delta" in events
    assert events[-1] == "message_stop"
    sent = mock_upstream.find_one(m, "/v1/chat/completions")["body"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    row = usage_rows(gw, key["tenant"], 1)["gpt"]
    assert row["output_tokens"] == final.usage.output_tokens > 0
    assert row["input_tokens"] == final.usage.input_tokens > 0


def test_tool_history_and_images_translate(client: anthropic.Anthropic, mock_upstream: MockUpstream) -> None:
    m = marker()
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    client.messages.create(
        model="gpt",
        max_tokens=100,
        tools=[{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"what is here {m}"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
        ],
    )
    sent = mock_upstream.find_one(m, "/v1/chat/completions")["body"]
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {"type": "object"}}}
    ]
    assert sent["tool_choice"] == "auto"
    assert sent["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{png}"},
    }
    assert sent["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}


def test_server_tool_on_chat_is_a_400_naming_it(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(
            model="gpt",
            max_tokens=100,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            messages=[{"role": "user", "content": "news?"}],
        )
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "tools[0].type" in e.value.body["error"]["message"]


# ---- keys and errors in Anthropic's shape -----------------------------------------------


def test_bearer_key_works_too(gw: Gateway, key: dict[str, Any]) -> None:
    c = anthropic.Anthropic(base_url=gw.url, auth_token=key["key"], max_retries=0, timeout=30)
    try:
        msg = c.messages.create(model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert msg.content[0].text == MOCK_CONTENT
    finally:
        c.close()


def test_errors_are_anthropic_shaped(gw: Gateway, client: anthropic.Anthropic) -> None:
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="no-such-model", max_tokens=10, messages=user)
    assert nf.value.body["error"]["type"] == "not_found_error"
    bad = claude_client(gw, "tg-nope-nope")
    with pytest.raises(anthropic.AuthenticationError) as auth:
        bad.messages.create(model="gpt", max_tokens=10, messages=user)
    bad.close()
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    r = httpx.post(
        f"{gw.url}/v1/messages",
        headers={"x-api-key": client.api_key or ""},
        json={"model": "gpt", "messages": user},
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    # The upstream's 529: the gateway's own 503, Anthropic's overloaded_error.
    with pytest.raises(anthropic.APIStatusError) as over:
        client.messages.create(model="claude", max_tokens=10, system=script(status=529), messages=user)
    assert over.value.status_code == 503
    assert over.value.body["error"]["type"] == "overloaded_error"
    # An upstream's own 4xx on a native call passes as Anthropic sent it.
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude", max_tokens=10, system=script(status=429), messages=user)
    assert limited.value.body["error"]["type"] == "rate_limit_error"


def test_quota_refusal_is_a_rate_limit_error(gw: Gateway) -> None:
    broke = new_key(gw, plan={"monthly_budget_usd": "0"})
    c = claude_client(gw, broke["key"])
    try:
        with pytest.raises(anthropic.RateLimitError) as e:
            c.messages.create(model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    finally:
        c.close()
    assert e.value.status_code == 429
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "rate_limit_error"
    limited = new_key(gw, plan={"rpm": 1})
    c = claude_client(gw, limited["key"])
    try:
        c.messages.create(model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(anthropic.RateLimitError) as e:
            c.messages.create(model="gpt", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    finally:
        c.close()
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_stream_cut_midway_raises_and_bills_what_was_delivered(
    gw: Gateway, client: anthropic.Anthropic, key: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(
            model="claude",
            max_tokens=200,
            system=script(content="one two three four five six", drop_after=4),
            messages=[{"role": "user", "content": "count"}],
        ) as stream:
            for _ in stream:
                pass
    row = usage_rows(gw, key["tenant"], 1)["claude"]
    assert row["requests"] == 1
    assert row["input_tokens"] > 0


# ---- the Responses API (official OpenAI SDK) --------------------------------------------


@pytest.fixture()
def oai(gw: Gateway, key: dict[str, Any]) -> Iterator[openai.OpenAI]:
    c = make_client(gw, key["key"])
    yield c
    c.close()


def test_responses_create_is_forwarded_natively(
    gw: Gateway, oai: openai.OpenAI, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    raw = oai.responses.with_raw_response.create(
        model="gpt", instructions="Be terse.", input=f"say hello {m}", max_output_tokens=50, store=False
    )
    assert raw.headers["x-tollgate-deployment"] == "gpt-4o-mini"
    resp = raw.parse()
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text == MOCK_CONTENT
    sent = mock_upstream.find_one(m, "/v1/responses")
    assert sent["body"] == {
        "model": "gpt-4o-mini",
        "instructions": "Be terse.",
        "input": f"say hello {m}",
        "max_output_tokens": 50,
        "store": False,
    }
    assert header(sent, "authorization") == f"Bearer {UPSTREAM_KEY}"
    row = usage_rows(gw, key["tenant"], 1)["gpt"]
    assert (row["input_tokens"], row["output_tokens"]) == (resp.usage.input_tokens, resp.usage.output_tokens)
    assert row["output_tokens"] > 0


def test_responses_stream_native(
    gw: Gateway, oai: openai.OpenAI, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    with oai.responses.stream(model="gpt", input=f"hello {m}") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == MOCK_CONTENT
    assert mock_upstream.find_one(m, "/v1/responses")["body"]["stream"] is True
    row = usage_rows(gw, key["tenant"], 1)["gpt"]
    assert (row["input_tokens"], row["output_tokens"]) == (final.usage.input_tokens, final.usage.output_tokens)


def test_responses_bridged_to_anthropic(
    gw: Gateway, oai: openai.OpenAI, key: dict[str, Any], mock_upstream: MockUpstream
) -> None:
    m = marker()
    resp = oai.responses.create(
        model="claude",
        instructions=script(content="one two three", prompt_tokens=6),
        input=[{"role": "user", "content": [{"type": "input_text", "text": f"count {m}"}]}],
        max_output_tokens=100,
    )
    assert resp.object == "response" and resp.model == "claude"
    assert resp.output_text == "one two three"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (6, 3)
    sent = mock_upstream.find_one(m, "/v1/messages")["body"]
    assert sent["model"] == "claude-sonnet-4-5"
    assert sent["messages"] == [{"role": "user", "content": f"count {m}"}]
    assert sent["max_tokens"] == 100
    row = usage_rows(gw, key["tenant"], 1)["claude"]
    assert (row["input_tokens"], row["output_tokens"]) == (6, 3)


def test_responses_tools_round_trip_through_the_bridge(oai: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": f"Weather {m}",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    first = oai.responses.create(
        model="claude",
        instructions=script(tool_calls=[{"name": "get_weather", "input": {"city": "Paris"}}]),
        input="weather in Paris?",
        tools=tools,
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = oai.responses.create(
        model="claude",
        input=[
            {"role": "user", "content": "weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": f"sunny {m}"},
        ],
        tools=tools,
    )
    assert second.output_text == MOCK_CONTENT
    sent = mock_upstream.find_one(f"sunny {m}", "/v1/messages")["body"]
    assert sent["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": call.call_id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert sent["messages"][2]["content"][0]["type"] == "tool_result"


def test_responses_stream_through_the_bridge(gw: Gateway, oai: openai.OpenAI, key: dict[str, Any]) -> None:
    with oai.responses.stream(
        model="claude", instructions=script(content="alpha beta gamma", prompt_tokens=4), input="go"
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "alpha beta gamma"
    assert final.output_text == "alpha beta gamma"
    assert final.status == "completed"
    row = usage_rows(gw, key["tenant"], 1)["claude"]
    assert (row["input_tokens"], row["output_tokens"]) == (4, 3)


def test_responses_built_in_tool_on_another_model_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="claude", input="news?", tools=[{"type": "web_search_preview"}])
    assert e.value.param == "tools[0].type"
    assert "web_search_preview" in e.value.message


def test_responses_retrieve_delete_and_ownership(gw: Gateway, oai: openai.OpenAI) -> None:
    m = marker()
    first = oai.responses.create(model="gpt", input=f"remember {m}")
    again = oai.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == MOCK_CONTENT
    items = oai.responses.input_items.list(first.id)
    assert items.data[0].content == f"remember {m}" or items.data[0].content[0].text == f"remember {m}"
    other = make_client(gw, new_key(gw)["key"])
    try:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as e:
            other.responses.create(model="gpt", input="and?", previous_response_id=first.id)
        assert e.value.param == "previous_response_id"
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(first.id)
    finally:
        other.close()
    oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
    unstored = oai.responses.create(model="gpt", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)


def test_follow_up_goes_to_the_deployment_that_made_it(oai: openai.OpenAI) -> None:
    seen = {
        oai.responses.with_raw_response.create(model="gpt-pair", input="hi").headers["x-tollgate-deployment"]
        for _ in range(4)
    }
    assert seen == {"pair-a", "pair-b"}, "without a previous response, both deployments answer"
    raw = oai.responses.with_raw_response.create(model="gpt-pair", input="start")
    home = raw.headers["x-tollgate-deployment"]
    previous = raw.parse().id
    for _ in range(4):
        raw = oai.responses.with_raw_response.create(model="gpt-pair", input="more", previous_response_id=previous)
        assert raw.headers["x-tollgate-deployment"] == home
        previous = raw.parse().id


def test_bridged_conversation_is_kept_by_the_gateway(
    gw: Gateway, oai: openai.OpenAI, mock_upstream: MockUpstream
) -> None:
    m = marker()
    first = oai.responses.create(
        model="claude", instructions=script(content="Nice to meet you"), input=f"my name is Ada {m}"
    )
    with oai.responses.stream(
        model="claude", previous_response_id=first.id, input=f"what is my name {m}?"
    ) as stream:
        for _ in stream:
            pass
        second = stream.get_final_response()
    sent = mock_upstream.find_one(f"what is my name {m}?", "/v1/messages")["body"]
    assert sent["messages"] == [
        {"role": "user", "content": f"my name is Ada {m}"},
        {"role": "assistant", "content": "Nice to meet you"},
        {"role": "user", "content": f"what is my name {m}?"},
    ]
    kept = oai.responses.retrieve(second.id)
    assert kept.output_text == second.output_text == MOCK_CONTENT
    items = oai.responses.input_items.list(second.id)
    assert len(items.data) == 3
    other = make_client(gw, new_key(gw)["key"])
    try:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(second.id)
    finally:
        other.close()
    assert oai.responses.delete(second.id) is None or True
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(second.id)


def test_response_ids_are_shared_across_replicas(
    mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two replicas on one Postgres and one Redis: a response made through one is found,
    owned and followed up (on the deployment that made it) through the other."""
    redis_url = require_env("TOLLGATE_TEST_REDIS_URL")
    with fresh_database("tg_sdk_replicas") as database_url:
        config = dialects_config(mock_upstream, database_url) + f"redis_url: {_q(redis_url)}\n"
        with (
            launch_gateway(config, tmp_path_factory.mktemp("replica-a")) as a,
            launch_gateway(config, tmp_path_factory.mktemp("replica-b")) as b,
        ):
            key = new_key(a)["key"]
            ca, cb = make_client(a, key), make_client(b, key)
            stranger = make_client(b, new_key(b)["key"])
            try:
                raw = ca.responses.with_raw_response.create(model="gpt-pair", input="start")
                home = raw.headers["x-tollgate-deployment"]
                previous = raw.parse().id
                for _ in range(3):
                    raw = cb.responses.with_raw_response.create(
                        model="gpt-pair", input="more", previous_response_id=previous
                    )
                    assert raw.headers["x-tollgate-deployment"] == home
                    previous = raw.parse().id
                assert cb.responses.retrieve(previous).id == previous
                bridged = ca.responses.create(model="claude", input="hello")
                assert cb.responses.retrieve(bridged.id).output_text == bridged.output_text
                with pytest.raises(openai.NotFoundError):
                    stranger.responses.retrieve(bridged.id)
                with pytest.raises(openai.NotFoundError):
                    stranger.responses.create(model="gpt-pair", input="x", previous_response_id=previous)
            finally:
                for c in (ca, cb, stranger):
                    c.close()


def test_responses_quota_refusal_and_messages_idempotency(gw: Gateway, key: dict[str, Any]) -> None:
    broke = make_client(gw, new_key(gw, plan={"monthly_budget_usd": "0"})["key"])
    try:
        with pytest.raises(openai.RateLimitError) as e:
            broke.responses.create(model="gpt", input="hi")
    finally:
        broke.close()
    assert e.value.code == "insufficient_quota"
    body = {"model": "gpt", "max_tokens": 20, "messages": [{"role": "user", "content": f"once {marker()}"}]}
    headers = {"x-api-key": key["key"], "Idempotency-Key": f"idem-{uuid.uuid4().hex}"}
    first = httpx.post(f"{gw.url}/v1/messages", headers=headers, json=body, timeout=30)
    again = httpx.post(f"{gw.url}/v1/messages", headers=headers, json=body, timeout=30)
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    reused = httpx.post(f"{gw.url}/v1/messages", headers=headers, json={**body, "max_tokens": 21}, timeout=30)
    assert reused.status_code == 422
    assert reused.json()["type"] == "error" and reused.json()["error"]["type"] == "invalid_request_error"
    rows = usage_rows(gw, key["tenant"], 1)
    assert rows["gpt"]["requests"] == 1, "a replay is not charged again"


def test_responses_stream_cut_midway_is_billed_for_what_was_delivered(
    gw: Gateway, oai: openai.OpenAI, key: dict[str, Any]
) -> None:
    deltas = []
    with pytest.raises(openai.APIError):
        with oai.responses.stream(
            model="gpt",
            input="count for me",
            extra_body={"mock": {"content": "one two three four five", "drop_after": 7}},
        ) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
    assert deltas, "some text was delivered before the cut"
    row = usage_rows(gw, key["tenant"], 1)["gpt"]
    assert row["input_tokens"] > 0
    assert row["output_tokens"] == len(deltas), "the delivered words, counted by the tokenizer"


def test_whole_deterministic_answers_are_cached_in_each_dialect(
    gw: Gateway, client: anthropic.Anthropic, oai: openai.OpenAI, key: dict[str, Any]
) -> None:
    m = marker()
    user = [{"role": "user", "content": f"cache me {m}"}]
    # This SDK has no `temperature` argument any more; the API still takes the field.
    cold = {"temperature": 0}
    for model in ("claude", "gpt"):
        first = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=user, extra_body=cold)
        again = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=user, extra_body=cold)
        assert (first.headers["x-tollgate-cache"], again.headers["x-tollgate-cache"]) == ("miss", "hit")
        assert again.parse().content[0].text == first.parse().content[0].text
        assert again.parse().usage.input_tokens == first.parse().usage.input_tokens
    hot = client.messages.with_raw_response.create(
        model="gpt", max_tokens=50, messages=user, extra_body={"temperature": 1}
    )
    assert hot.headers["x-tollgate-cache"] == "bypass"
    with client.messages.with_streaming_response.create(
        model="gpt", max_tokens=50, messages=user, stream=True, extra_body=cold
    ) as streamed:
        assert streamed.headers["x-tollgate-cache"] == "bypass"
        streamed.read()
    first = oai.responses.with_raw_response.create(model="gpt", input=f"cache me {m}", temperature=0)
    again = oai.responses.with_raw_response.create(model="gpt", input=f"cache me {m}", temperature=0)
    assert (first.headers["x-tollgate-cache"], again.headers["x-tollgate-cache"]) == ("miss", "hit")
    assert again.parse().id == first.parse().id
    # The id a hit repeats is still the tenant's, and still found.
    assert oai.responses.retrieve(first.parse().id).id == first.parse().id
    rows = usage_rows(gw, key["tenant"], 8)
    assert rows["claude"]["requests"] == 2 and rows["gpt"]["requests"] >= 6
