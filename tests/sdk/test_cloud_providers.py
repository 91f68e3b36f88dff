"""The `gemini`, `vertex` and `bedrock` providers, wildcard routes, aliases, key patterns and
`strategy: least_latency`, through the official OpenAI SDK, on both stores (SQLite and
Postgres).

The mock upstream speaks each provider's real wire format (tests/src/upstream/google.rs and
bedrock.rs): Google's `generateContent` with its SSE stream and errors, Vertex AI behind an
OAuth2 token endpoint that checks the gateway's RS256 assertion, Bedrock's Converse API
that verifies every request's SigV4 signature and streams AWS event-stream frames with
real CRC32s. Its knobs ride in the system prompt (`mock:{...}`), because the gateway
translates the body and keeps no unknown field.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import (
    MOCK_CONTENT,
    UPSTREAM_KEY,
    Gateway,
    MockUpstream,
    _q,
    fresh_database,
    header,
    launch_gateway,
    make_client,
    marker,
)

GEMINI_KEY = "gemini-sdk-upstream-key"
# The mock's Bedrock credentials (tests/src/upstream/bedrock.rs).
AWS_KEY_ID = "AKIAMOCKBEDROCK00001"
AWS_SECRET = "mock/Secret+Access/Key0000000000000000000"
AWS_SESSION_TOKEN = "mock-session-token"
SERVICE_ACCOUNT = Path(__file__).resolve().parents[1] / "fixtures" / "vertex-service-account.json"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def script(**knobs: Any) -> dict[str, str]:
    """A system message that scripts the mock's answer."""
    return {"role": "system", "content": "mock:" + json.dumps(knobs)}


def cloud_config(mock: MockUpstream, database_url: str, credentials: Path) -> str:
    vertex = (
        f"provider: vertex, base_url: {_q(mock.url + '/v1')}, project: tollgate-test, "
        f"location: us-central1, credentials_file: {_q(str(credentials))}, timeout_s: 5"
    )
    gemini = f"provider: gemini, base_url: {_q(mock.url + '/v1beta')}, api_key: {_q(GEMINI_KEY)}, timeout_s: 5"
    bedrock = (
        f"provider: bedrock, base_url: {_q(mock.url)}, region: us-east-1, "
        f"access_key_id: {_q(AWS_KEY_ID)}, secret_access_key: {_q(AWS_SECRET)}, timeout_s: 5"
    )
    openai_dep = f"provider: openai, base_url: {_q(mock.base_url)}, api_key: {_q(UPSTREAM_KEY)}, timeout_s: 5"
    return "".join(
        [
            "listen: 127.0.0.1:0\n",
            "admin_listen: 127.0.0.1:0\n",
            f"database_url: {_q(database_url)}\n",
            'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
            "meter: { flush_interval_ms: 100 }\n",
            "models:\n",
            f"  - {{ name: gemini-flash, deployments: [ {{ {gemini}, model: gemini-2.5-flash }} ] }}\n",
            f"  - {{ name: gemini-embed, deployments: [ {{ {gemini}, model: text-embedding-004 }} ] }}\n",
            f"  - {{ name: vertex-gemini, deployments: [ {{ {vertex}, model: gemini-2.5-pro }} ] }}\n",
            f"  - {{ name: vertex-claude, deployments: [ {{ {vertex}, model: claude-sonnet-4-5 }} ] }}\n",
            f"  - {{ name: vertex-embed, deployments: [ {{ {vertex}, model: text-embedding-005 }} ] }}\n",
            f"  - {{ name: bedrock-claude, deployments: [ {{ {bedrock}, model: {_q(BEDROCK_MODEL)} }} ] }}\n",
            f"  - {{ name: bedrock-llama, deployments: [ {{ {bedrock}, session_token: {_q(AWS_SESSION_TOKEN)}, "
            "model: meta.llama3-70b-instruct-v1:0 } ] }\n",
            f'  - {{ name: "google/*", deployments: [ {{ {gemini}, model: "*" }} ] }}\n',
            "  - name: fast-chat\n",
            "    aliases: [quick]\n",
            "    strategy: least_latency\n",
            "    deployments:\n",
            f"      - {{ {openai_dep}, name: lat-a, model: gpt-4o-mini }}\n",
            f"      - {{ {openai_dep}, name: lat-b, model: gpt-4o-mini }}\n",
            f"  - {{ name: whisper, deployments: [ {{ {openai_dep}, model: whisper-1 }} ] }}\n",
            f"  - {{ name: transcribe, deployments: [ {{ {openai_dep}, model: gpt-4o-transcribe }} ] }}\n",
            f"  - {{ name: tts, deployments: [ {{ {openai_dep}, model: tts-1 }} ] }}\n",
            "prices:\n",
            "  whisper: { input: 0, output: 0, per_audio_minute: 0.006 }\n",
            "  transcribe: { input: 2.5, output: 10 }\n",
            "  tts: { input: 0, output: 0, per_1m_characters: 15 }\n",
            "  gemini-flash: { input: 1, output: 2 }\n",
            "  gemini-2.0-flash: { input: 3, output: 5 }\n",
        ]
    )


@contextlib.contextmanager
def store_url(store: str, workdir: Path) -> Iterator[str]:
    if store == "sqlite":
        yield f"sqlite://{workdir / 'tollgate.db'}"
    else:
        with fresh_database("tg_sdk_cloud") as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cloud(
    request: pytest.FixtureRequest, mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp(f"cloud-{request.param}")
    account = json.loads(SERVICE_ACCOUNT.read_text())
    account["token_uri"] = f"{mock_upstream.url}/token"
    credentials = workdir / "service-account.json"
    credentials.write_text(json.dumps(account))
    with store_url(request.param, workdir) as database_url:
        with launch_gateway(cloud_config(mock_upstream, database_url, credentials), workdir) as gw:
            yield gw


def new_key(gw: Gateway, **body: Any) -> dict[str, Any]:
    r = gw.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-cloud-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    tenant = r.json()
    r = gw.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "cloud", **body})
    assert r.status_code == 201, r.text
    return {"tenant": tenant["id"], **r.json()}


@pytest.fixture(scope="module")
def key(cloud: Gateway) -> dict[str, Any]:
    return new_key(cloud)


@pytest.fixture(scope="module")
def client(cloud: Gateway, key: dict[str, Any]) -> Iterator[openai.OpenAI]:
    c = make_client(cloud, key["key"])
    yield c
    c.close()


def stream_text(stream: Any) -> tuple[str, list[Any]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ---- Gemini ---------------------------------------------------------------------------


def test_gemini_chat(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-flash",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": f"say hello {m}"}],
        max_tokens=50,
        temperature=0.3,
    )
    assert raw.headers["x-tollgate-deployment"] == "gemini-2.5-flash"
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.model == "gemini-2.5-flash-001"
    assert resp.choices[0].message.content == MOCK_CONTENT
    assert resp.choices[0].finish_reason == "stop"
    # Prompt: "Be terse." + "say hello <m>" = 5 words; output 5 words + 2 thinking tokens.
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (5, 7)
    assert resp.usage.completion_tokens_details.reasoning_tokens == 2
    # 5 × 1 USD + 7 × 2 USD per 1M tokens = 0.000019.
    assert raw.headers["x-tollgate-cost-usd"] == "0.000019"
    sent = mock_upstream.find_one(m, "/v1beta/models/gemini-2.5-flash:generateContent")
    assert header(sent, "x-goog-api-key") == GEMINI_KEY
    assert header(sent, "authorization") is None
    assert sent["body"]["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert sent["body"]["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 50}


def test_gemini_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "count to five"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, chunks = stream_text(stream)
    assert text == MOCK_CONTENT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7


def test_gemini_tools_round_trip(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    first = client.chat.completions.create(
        model="gemini-flash",
        messages=[
            script(tool_calls=[{"name": "get_weather", "input": {"city": "Paris"}}]),
            {"role": "user", "content": "Weather in Paris?"},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    m = marker()
    second = client.chat.completions.create(
        model="gemini-flash",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear"})},
            {"role": "user", "content": f"thanks {m}"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == MOCK_CONTENT
    sent = mock_upstream.find_one(m)["body"]
    assert sent["contents"][2]["parts"][0]["functionResponse"] == {"name": "get_weather", "response": {"sky": "clear"}}
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER_TOOL["function"]["parameters"]


def test_gemini_embeddings(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    # The SDK asks for base64 by default and decodes it.
    resp = client.embeddings.create(model="gemini-embed", input=["hello world", "bye"], dimensions=4)
    assert [len(d.embedding) for d in resp.data] == [4, 4]
    floats = client.embeddings.create(model="gemini-embed", input="hello world", dimensions=4, encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(resp.data[0].embedding, rel=1e-6)
    sent = mock_upstream.find("hello world", "/v1beta/models/text-embedding-004:batchEmbedContents")
    assert sent and sent[-1]["body"]["requests"][0]["outputDimensionality"] == 4


def test_gemini_errors_raise_the_sdks_classes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gemini-flash", messages=[script(status=429), {"role": "user", "content": "x"}])
    assert "RESOURCE_EXHAUSTED" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gemini-flash",
            messages=[{"role": "user", "content": [{"type": "input_video", "video": "x"}]}],  # type: ignore[list-item]
        )
    assert e.value.body["param"] == "messages[0].content[0].type"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gemini-flash", messages=[script(status=500), {"role": "user", "content": "x"}])


# ---- Vertex AI --------------------------------------------------------------------------


def token_requests(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests() if r["path"] == "/token")


def test_vertex_gemini_with_a_cached_token(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": f"hi {m}"}])
    assert resp.choices[0].message.content == MOCK_CONTENT
    sent = mock_upstream.find_one(
        m, "/v1/projects/tollgate-test/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    )
    assert (header(sent, "authorization") or "").startswith("Bearer ya29.mock-")
    before = token_requests(mock_upstream)
    text, _ = stream_text(
        client.chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "x"}], stream=True)
    )
    assert text == MOCK_CONTENT
    client.chat.completions.create(model="vertex-claude", messages=[{"role": "user", "content": "x"}])
    assert token_requests(mock_upstream) == before, "the token is reused until it nears its expiry"


def test_vertex_claude_plain_and_streamed(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.chat.completions.create(
        model="vertex-claude", messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": f"hi {m}"}]
    )
    assert resp.choices[0].message.content == MOCK_CONTENT and resp.choices[0].finish_reason == "stop"
    sent = mock_upstream.find_one(m)
    assert sent["path"].endswith("/publishers/anthropic/models/claude-sonnet-4-5:rawPredict")
    assert sent["body"]["anthropic_version"] == "vertex-2023-10-16" and "model" not in sent["body"]
    text, chunks = stream_text(
        client.chat.completions.create(
            model="vertex-claude",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert text == MOCK_CONTENT and chunks[-1].usage is not None


def test_vertex_embeddings_report_tokens(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model="vertex-embed", input=["one two three", "four"], encoding_format="float")
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
    assert resp.usage.prompt_tokens == 4


# ---- Bedrock ----------------------------------------------------------------------------


def test_bedrock_signed_chat(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="bedrock-claude",
        messages=[script(cached_tokens=4), {"role": "user", "content": f"hello there {m}"}],
        max_tokens=64,
        stop=["END"],
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == MOCK_CONTENT
    assert resp.model == BEDROCK_MODEL
    assert resp.usage.prompt_tokens_details.cached_tokens == 4
    sent = mock_upstream.find_one(m)
    # The model id is one path segment; the mock checked the SigV4 signature over it.
    assert sent["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert (header(sent, "authorization") or "").startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
    assert header(sent, "x-amz-security-token") is None
    assert sent["body"]["inferenceConfig"] == {"maxTokens": 64, "stopSequences": ["END"]}


def test_bedrock_stream_and_session_token(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    text, chunks = stream_text(
        client.chat.completions.create(
            model="bedrock-llama",
            messages=[{"role": "user", "content": f"stream please {m}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert text == MOCK_CONTENT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    sent = mock_upstream.find_one(m)
    assert sent["path"].endswith("/converse-stream")
    assert header(sent, "x-amz-security-token") == AWS_SESSION_TOKEN


def test_bedrock_tools_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="bedrock-claude",
        messages=[script(tool_calls=[{"name": "get_weather", "input": {"city": "Oslo"}}]), {"role": "user", "content": "?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    chunks = list(stream)
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_bedrock_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="bedrock-claude", messages=[script(status=429), {"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="bedrock-claude",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}],
        )
    assert e.value.body["param"] == "messages[0].content[0].image_url.url"  # type: ignore[index]
    # An exception frame mid-stream: the SDK raises instead of ending quietly.
    stream = client.chat.completions.create(
        model="bedrock-claude", messages=[script(error_after=3), {"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)


# ---- routes -----------------------------------------------------------------------------


def test_wildcard_routes_are_priced_by_the_upstream_model(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="google/gemini-2.0-flash", messages=[{"role": "user", "content": f"hi {m}"}]
    )
    sent = mock_upstream.find_one(m)
    assert sent["path"] == "/v1beta/models/gemini-2.0-flash:generateContent"
    resp = raw.parse()
    # 2 prompt tokens × 3 USD + 7 completion tokens × 5 USD per 1M = 0.000041.
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2, 7)
    assert raw.headers["x-tollgate-cost-usd"] == "0.000041"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="google/", messages=[{"role": "user", "content": "x"}])


def test_models_list_names_aliases_and_patterns(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    for name in ("gemini-flash", "vertex-claude", "bedrock-claude", "google/*", "fast-chat", "quick"):
        assert name in ids
    assert client.models.retrieve("google/gemini-2.0-flash").id == "google/gemini-2.0-flash"
    raw = client.chat.completions.with_raw_response.create(model="quick", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-tollgate-deployment"] in ("lat-a", "lat-b")


def test_key_allow_lists_take_patterns(cloud: Gateway) -> None:
    key = new_key(cloud, models=["google/*", "fast-chat"])
    c = make_client(cloud, key["key"])
    try:
        assert c.chat.completions.create(model="google/gemini-x", messages=[{"role": "user", "content": "x"}]).choices
        # An alias of an allowed model is allowed.
        assert c.chat.completions.create(model="quick", messages=[{"role": "user", "content": "x"}]).choices
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
        assert sorted(m.id for m in c.models.list()) == ["fast-chat", "google/*", "quick"]
    finally:
        c.close()


def test_least_latency_model_answers_from_both_deployments(client: openai.OpenAI) -> None:
    seen = set()
    for _ in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="fast-chat", messages=[{"role": "user", "content": "x"}]
        )
        seen.add(raw.headers["x-tollgate-deployment"])
    assert seen <= {"lat-a", "lat-b"} and seen


def test_usage_is_recorded_per_model(cloud: Gateway) -> None:
    key = new_key(cloud)
    c = make_client(cloud, key["key"])
    try:
        for model in ("gemini-flash", "vertex-gemini", "bedrock-claude", "google/gemini-2.0-flash"):
            c.chat.completions.create(model=model, messages=[{"role": "user", "content": "one two"}])
    finally:
        c.close()
    deadline = time.monotonic() + 20
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = cloud.admin("GET", f"/admin/v1/usage?tenant={key['tenant']}&group_by=model")
        assert r.status_code == 200, r.text
        rows = {row["group"]: row for row in r.json()["data"]}
        if len(rows) == 4:
            break
        time.sleep(0.2)
    assert set(rows) == {"gemini-flash", "vertex-gemini", "bedrock-claude", "google/gemini-2.0-flash"}
    assert all(row["requests"] == 1 and row["output_tokens"] > 0 for row in rows.values())
    # Priced by gemini-2.0-flash: 2 × 3 + 7 × 5 per 1M.
    assert rows["google/gemini-2.0-flash"]["cost_usd"] == "0.000041"


# ---- audio ------------------------------------------------------------------------------

# Two seconds of the mock's audio (16 kB/s).
AUDIO = b"RIFF" + bytes(31_996)


def test_transcription_priced_per_minute(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=(f"{m}.wav", AUDIO, "audio/wav"), language="en"
    )
    assert raw.parse().text == "Hello from the mock upstream."
    # 2 s at 0.006 USD a minute = 0.0002.
    assert raw.headers["x-tollgate-cost-usd"] == "0.000200"
    sent = mock_upstream.find_one(m, "/v1/audio/transcriptions")
    assert sent["body"]["model"] == "whisper-1"
    assert sent["body"]["language"] == "en"
    assert sent["body"]["file"] == {"filename": f"{m}.wav", "bytes": len(AUDIO)}


def test_translation_verbose_json_and_text(client: openai.OpenAI) -> None:
    raw = client.audio.translations.with_raw_response.create(
        model="whisper", file=("a.wav", AUDIO), response_format="verbose_json"
    )
    assert raw.parse().text == "Hello from the mock upstream."
    assert raw.headers["x-tollgate-cost-usd"] == "0.000200"
    text = client.audio.transcriptions.create(model="whisper", file=("a.wav", AUDIO), response_format="text")
    assert text.strip() == "Hello from the mock upstream."


def test_transcription_priced_by_tokens(client: openai.OpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(model="transcribe", file=("a.wav", AUDIO))
    assert raw.parse().usage.input_tokens == 20
    # 20 audio tokens × 2.5 + 5 output tokens × 10 USD per 1M = 0.0001.
    assert raw.headers["x-tollgate-cost-usd"] == "0.000100"


def test_speech_streams_audio_priced_per_character(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    text = f"hello {m}"
    raw = client.audio.speech.with_raw_response.create(model="tts", voice="alloy", input=text)
    audio = raw.parse().content
    assert raw.headers["content-type"] == "audio/mpeg"
    assert audio.startswith(b"ID3") and len(audio) == 6 + 10 * len(text)
    # len(text) characters × 15 USD per 1M.
    expected = len(text) * 15
    assert raw.headers["x-tollgate-cost-usd"] == f"0.{expected:06d}"
    assert mock_upstream.find_one(m, "/v1/audio/speech")["body"]["model"] == "tts-1"


def test_audio_errors(client: openai.OpenAI, raw_client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="gemini-flash", voice="alloy", input="x")
    assert e.value.code == "unsupported_endpoint"
    r = raw_client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = raw_client.post("/v1/audio/transcriptions", json={"model": "whisper"})
    assert r.status_code == 400


@pytest.fixture()
def raw_client(cloud: Gateway, key: dict[str, Any]) -> Iterator[Any]:
    from conftest import httpx

    with httpx.Client(base_url=cloud.url, headers={"Authorization": f"Bearer {key['key']}"}, timeout=30, trust_env=False) as c:
        yield c
