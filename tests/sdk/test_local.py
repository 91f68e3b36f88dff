"""Local models (`provider: local`, candle) through the gateway with the official SDK, and
the same engine as a standalone `tollgate worker`.

- minilm: the real all-MiniLM-L6-v2 (TOLLGATE_TEST_MINILM_DIR, unpacked by scripts/test),
  checked against sentence-transformers' vectors (tests/models/minilm_reference.json).
- tiny-llama: a random-weight Llama written by tests/models/make_tiny_llama.py, so the
  text is gibberish but deterministic: greedy and seeded runs repeat exactly.
- tiny-qwen: the same kind of model in Qwen 2.5's style (its chat template and
  `<tool_call>` format), with a small `stream_buffer`: tools, JSON schema and a client that
  never reads its stream.
- A full queue answers 429 when the model has nowhere else to go, and spills over to the
  next deployment (the mock upstream) when it has.
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import (
    IN_CI,
    httpx,
    STARTUP_TIMEOUT_S,
    Gateway,
    MockUpstream,
    Process,
    _q,
    free_port,
    fresh_database,
    launch_gateway,
    make_client,
    require_binary,
    require_env,
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
REFERENCE = json.loads((MODELS_DIR / "minilm_reference.json").read_text())


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    path = require_env("TOLLGATE_TEST_MINILM_DIR")
    if not (Path(path) / "model.safetensors").is_file():
        message = f"TOLLGATE_TEST_MINILM_DIR={path} has no model.safetensors (run scripts/test)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tiny-llama")
    subprocess.run([sys.executable, str(MODELS_DIR / "make_tiny_llama.py"), str(out)], check=True)
    return str(out)


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("tiny-qwen")
    subprocess.run(
        [sys.executable, str(MODELS_DIR / "make_tiny_llama.py"), str(out), "--style", "qwen2"], check=True
    )
    return str(out)


@pytest.fixture(scope="module")
def local_gateway(
    minilm_dir: str,
    tiny_llama_dir: str,
    tiny_qwen_dir: str,
    mock_upstream: MockUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    with fresh_database("tg_sdk_local") as database_url:
        local = lambda path, name: (  # noqa: E731
            f"      - {{ provider: local, path: {_q(path)}, name: {name}, queue_size: 1 }}\n"
        )
        config = "".join(
            [
                "listen: 127.0.0.1:0\n",
                "admin_listen: 127.0.0.1:0\n",
                f"database_url: {_q(database_url)}\n",
                'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
                "models:\n",
                "  - name: minilm\n",
                "    deployments:\n",
                local(minilm_dir, "local-minilm"),
                "  - name: tiny-llama\n",
                "    deployments:\n",
                local(tiny_llama_dir, "local-llama"),
                "  - name: tiny-qwen\n",
                "    deployments:\n",
                f"      - {{ provider: local, path: {_q(tiny_qwen_dir)}, name: local-qwen, stream_buffer: 16 }}\n",
                # Local first by far (weight), the mock upstream only when the queue is full.
                "  - name: minilm-spill\n",
                "    deployments:\n",
                f"      - {{ provider: local, path: {_q(minilm_dir)}, name: local-minilm, weight: 100 }}\n",
                f"      - {{ provider: openai, base_url: {_q(mock_upstream.base_url)}, api_key: sk-x, "
                "model: text-embedding-3-small, name: hosted, weight: 1, timeout_s: 10 }\n",
            ]
        )
        with launch_gateway(config, tmp_path_factory.mktemp("local-gateway")) as gw:
            yield gw


@pytest.fixture(scope="module")
def lclient(local_gateway: Gateway) -> Iterator[openai.OpenAI]:
    gw = local_gateway
    r = gw.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-local-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    r = gw.admin("POST", f"/admin/v1/tenants/{r.json()['id']}/keys", json={"name": "local"})
    assert r.status_code == 201, r.text
    c = make_client(gw, r.json()["key"])
    yield c
    c.close()


def test_embeddings_match_sentence_transformers(lclient: openai.OpenAI) -> None:
    sentences = REFERENCE["sentences"]
    raw = lclient.embeddings.with_raw_response.create(model="minilm", input=sentences)
    assert raw.headers["x-tollgate-deployment"] == "local-minilm"
    resp = raw.parse()
    assert resp.model == "minilm"
    assert [d.index for d in resp.data] == list(range(len(sentences)))
    for d, expected in zip(resp.data, REFERENCE["embeddings"]):
        assert len(d.embedding) == 384
        assert cosine(d.embedding, expected) >= 0.999
    assert resp.usage.prompt_tokens == resp.usage.total_tokens
    assert resp.usage.prompt_tokens > 2 * len(sentences)

    # A single string; base64 decodes to the same little-endian f32 vector.
    one = lclient.embeddings.create(model="minilm", input=sentences[0])
    assert len(one.data) == 1
    assert cosine(one.data[0].embedding, REFERENCE["embeddings"][0]) >= 0.999
    b64 = lclient.embeddings.with_raw_response.create(
        model="minilm", input=sentences[0], encoding_format="base64"
    )
    packed = json.loads(b64.http_response.text)["data"][0]["embedding"]
    raw_bytes = base64.b64decode(packed)
    vector = struct.unpack(f"<{len(raw_bytes) // 4}f", raw_bytes)
    assert len(vector) == 384
    assert max(abs(a - b) for a, b in zip(vector, one.data[0].embedding)) < 1e-6


def test_embedding_errors_name_the_field(lclient: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        lclient.embeddings.create(model="minilm", input="x", dimensions=128)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        lclient.embeddings.create(model="minilm", input=[[1, 2, 3]])
    assert e.value.body["param"] == "input[0]"
    with pytest.raises(openai.BadRequestError) as e:
        lclient.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "unsupported_endpoint"


def test_chat_plain_is_deterministic_with_usage(lclient: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    raw = lclient.chat.completions.with_raw_response.create(
        model="tiny-llama", messages=messages, max_tokens=12, temperature=0
    )
    assert raw.headers["x-tollgate-deployment"] == "local-llama"
    a = raw.parse()
    assert a.object == "chat.completion"
    assert a.model == "tiny-llama"
    assert a.choices[0].message.role == "assistant"
    assert a.choices[0].finish_reason in ("length", "stop")
    assert a.usage.prompt_tokens > 5
    assert 1 <= a.usage.completion_tokens <= 12
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    b = lclient.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=12, temperature=0)
    assert b.choices[0].message.content == a.choices[0].message.content

    # Seeded sampling repeats; n choices are numbered and each has its own stream.
    seeded = dict(model="tiny-llama", messages=messages, max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, n=3)
    s1 = lclient.chat.completions.create(**seeded)
    s2 = lclient.chat.completions.create(**seeded)
    assert [c.index for c in s1.choices] == [0, 1, 2]
    assert [c.message.content for c in s1.choices] == [c.message.content for c in s2.choices]
    assert len({c.message.content for c in s1.choices}) > 1


def test_chat_stream_matches_plain(lclient: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream it"}]
    plain = lclient.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10, temperature=0)
    stream = lclient.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_stop_sequence_cuts_the_text(lclient: openai.OpenAI) -> None:
    args = dict(model="tiny-llama", prompt="The gateway", max_tokens=20, temperature=0)
    full = lclient.completions.create(**args)
    text = full.choices[0].text
    assert full.object == "text_completion"
    assert full.choices[0].finish_reason == "length"
    assert len(text) >= 4, text
    # A stop sequence taken from the middle of the greedy text: the answer ends before it.
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = lclient.completions.create(**args, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.usage.completion_tokens < full.usage.completion_tokens


def test_completions_stream_and_batch_prompts(lclient: openai.OpenAI) -> None:
    plain = lclient.completions.create(model="tiny-llama", prompt=["one", "two"], max_tokens=6, temperature=0)
    assert [c.index for c in plain.choices] == [0, 1]
    stream = lclient.completions.create(model="tiny-llama", prompt="one", max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == plain.choices[0].text


def test_generation_errors_name_the_field(lclient: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "x"}]
    for kwargs, param in [
        (dict(temperature=3), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(n=50), "n"),
        (dict(max_tokens=0), "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            lclient.chat.completions.create(model="tiny-llama", messages=msgs, **kwargs)
        assert e.value.body["param"] == param, kwargs
    with pytest.raises(openai.BadRequestError) as e:
        lclient.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x" * 400}])
    assert e.value.code == "context_length_exceeded"


def _embed_many(client: openai.OpenAI, model: str, workers: int) -> list[Any]:
    texts = [f"sentence {i} in a batch big enough to keep the model busy for a while" for i in range(64)]

    def one(_: int) -> Any:
        try:
            return client.embeddings.with_raw_response.create(model=model, input=texts)
        except openai.RateLimitError as e:
            return e

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(workers)))


def test_full_queue_is_429_and_spills_over(lclient: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    # Only a local deployment (queue_size 1): some of 8 concurrent requests are refused.
    results = _embed_many(lclient, "minilm", 8)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, openai.RateLimitError)]
    assert refused, "a queue of 1 took 8 concurrent requests"
    assert served
    assert all(e.status_code == 429 and e.code == "rate_limit_exceeded" for e in refused)
    assert all(len(r.parse().data) == 64 for r in served)

    # With a second deployment, the overflow goes there instead: every request succeeds.
    # (Weight 100:1 would send at most one of these to the mock without spill-over.)
    results = _embed_many(lclient, "minilm-spill", 8)
    assert not [r for r in results if isinstance(r, Exception)]
    by = [r.headers["x-tollgate-deployment"] for r in results]
    assert by.count("local-minilm") >= 1, by
    assert by.count("hosted") >= 2, by


# ---- a slow client, tools, JSON ------------------------------------------------------

WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"]}}},
]


def _metric(gw: Gateway, name: str) -> float:
    text = gw.admin("GET", "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_an_unread_stream_does_not_stall_the_model(
    local_gateway: Gateway, lclient: openai.OpenAI
) -> None:
    """A client that opens a big stream and never reads it: the model goes on serving the
    others, the stream is cut at its buffer (counted in /metrics) with an error event, and
    what was generated is billed."""
    gw = local_gateway
    cut_before = _metric(gw, "tollgate_local_streams_cut_total")
    url = urllib.parse.urlparse(gw.url)
    body = json.dumps({
        "model": "tiny-qwen", "stream": True, "n": 16, "max_tokens": 3000, "temperature": 1.0,
        "logprobs": True, "top_logprobs": 20,
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }).encode()
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A tiny receive window, and nothing read: the server's socket fills, then its buffer.
    held.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    held.connect((url.hostname, url.port))
    held.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {lclient.api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        # The same model keeps answering everyone else.
        for i in range(3):
            r = lclient.chat.completions.create(
                model="tiny-qwen", messages=[{"role": "user", "content": f"quick {i}"}], max_tokens=16
            )
            assert r.choices[0].finish_reason in ("stop", "length")
            assert r.usage.completion_tokens >= 1
        # The held request is cut once its buffer is full (no timing asserted: we wait).
        deadline = time.monotonic() + 120
        while _metric(gw, "tollgate_local_streams_cut_total") <= cut_before:
            assert time.monotonic() < deadline, "the unread stream was never cut"
            time.sleep(0.2)
        held.settimeout(60)
        raw = b""
        while chunk := held.recv(1 << 16):
            raw += chunk
    finally:
        held.close()
    assert b" 200 " in raw.split(b"\r\n", 1)[0]
    assert b"stream_buffer_exceeded" in raw
    assert b"[DONE]" not in raw
    # Billed for the tokens it generated before the cut.
    deadline = time.monotonic() + 60
    while True:
        rows = gw.admin("GET", "/admin/v1/usage?group_by=model").json()["data"]
        out = sum(r["output_tokens"] for r in rows if r["group"] == "tiny-qwen")
        if out >= 16 + 3:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


def test_tool_calls_through_the_sdk(lclient: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = lclient.chat.completions.create(
        model="tiny-qwen", messages=messages, tools=WEATHER_TOOLS, tool_choice="required", max_tokens=120
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls and all(c.type == "function" and c.id.startswith("call_") for c in calls)
    for c in calls:
        assert c.function.name == "get_weather"
        args = json.loads(c.function.arguments)
        assert isinstance(args["city"], str)
        assert set(args) <= {"city", "unit"}
    # The answer goes back in the conversation: the template renders calls and results.
    follow = lclient.chat.completions.create(
        model="tiny-qwen",
        messages=messages + [
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'},
        ],
        tools=WEATHER_TOOLS,
        tool_choice="none",
        max_tokens=8,
    )
    assert follow.choices[0].message.tool_calls is None
    # Streamed: the SDK assembles the deltas. Greedy, because a sampled city name can run
    # past max_tokens, and a call cut by the length limit is never sent.
    stream = lclient.chat.completions.create(
        model="tiny-qwen", messages=messages, tools=WEATHER_TOOLS, stream=True, max_tokens=120, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    deltas = [tc for chunk in stream if chunk.choices for tc in (chunk.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather"
    assert isinstance(json.loads("".join(d.function.arguments or "" for d in deltas))["city"], str)
    # A model whose template knows no tools refuses them, naming the parameter.
    with pytest.raises(openai.BadRequestError) as e:
        lclient.chat.completions.create(model="tiny-llama", messages=messages, tools=WEATHER_TOOLS)
    assert e.value.body["param"] == "tools"


def test_json_schema_through_the_sdk(lclient: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 24}, "days": {"type": "integer"},
        "sunny": {"type": "boolean"}}, "required": ["city", "days", "sunny"], "additionalProperties": False}
    r = lclient.chat.completions.create(
        model="tiny-qwen", messages=[{"role": "user", "content": "Forecast as JSON"}], max_tokens=100, n=3,
        response_format={"type": "json_schema", "json_schema": {"name": "forecast", "schema": schema, "strict": True}},
    )
    for c in r.choices:
        v = json.loads(c.message.content)
        assert set(v) == {"city", "days", "sunny"}
        assert isinstance(v["city"], str) and isinstance(v["days"], int) and isinstance(v["sunny"], bool)
    with pytest.raises(openai.BadRequestError) as e:
        lclient.chat.completions.create(
            model="tiny-qwen", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a"}}},
        )
    assert e.value.body["param"] == "response_format.json_schema.schema"


def test_logprobs_and_multi_token_stop(lclient: openai.OpenAI) -> None:
    r = lclient.chat.completions.create(
        model="tiny-qwen", messages=[{"role": "user", "content": "hi"}], max_tokens=6, logprobs=True, top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    # A stop sequence of several tokens (each byte is a token here) cuts across them.
    args = dict(model="tiny-qwen", prompt="The gateway", max_tokens=30, temperature=0)
    text = lclient.completions.create(**args).choices[0].text
    assert len(text) >= 4, text
    stop = text[1:4]  # three one-byte tokens
    cut = lclient.completions.create(**args, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


# ---- tollgate worker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tiny_llama_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_binary("TOLLGATE_BIN")
    log = tmp_path_factory.mktemp("worker") / "stderr.log"
    p = Process("tollgate-worker", [binary, "worker", "--model", tiny_llama_dir, "--listen", "127.0.0.1:0", "--name", "tiny"], log)
    found = p.wait_for({"url": re.compile(r"tollgate worker: serving .* on (http://\S+)")}, STARTUP_TIMEOUT_S)
    yield found["url"]
    p.stop()


def test_worker_is_an_openai_server(worker: str) -> None:
    client = openai.OpenAI(base_url=worker, api_key="unused", max_retries=0, timeout=30)
    root = worker.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz", timeout=10).json() == {"status": "ok"}
    missing = httpx.get(f"{root}/v1/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    assert [m.id for m in client.models.list().data] == ["tiny"]
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert chat.model == "tiny"
    assert chat.usage.completion_tokens <= 5
    stream = client.completions.create(model="tiny", prompt="hi", max_tokens=5, temperature=0, stream=True)
    assert len([c for c in stream]) >= 1
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="x")
    client.close()


def test_gateway_routes_to_a_worker(worker: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The deployment shape the worker exists for: `provider: openai` at the worker's URL."""
    with fresh_database("tg_sdk_worker") as database_url:
        config = "".join(
            [
                "listen: 127.0.0.1:0\n",
                "admin_listen: 127.0.0.1:0\n",
                f"database_url: {_q(database_url)}\n",
                'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
                "models:\n",
                "  - name: remote-llama\n",
                "    deployments:\n",
                f"      - {{ provider: openai, base_url: {_q(worker)}, model: tiny, name: gpu-worker }}\n",
            ]
        )
        with launch_gateway(config, tmp_path_factory.mktemp("worker-gateway")) as gw:
            r = gw.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-worker-{uuid.uuid4().hex[:8]}"})
            assert r.status_code == 201, r.text
            r = gw.admin("POST", f"/admin/v1/tenants/{r.json()['id']}/keys", json={"name": "w"})
            assert r.status_code == 201, r.text
            client = make_client(gw, r.json()["key"])
            direct = openai.OpenAI(base_url=worker, api_key="unused", max_retries=0, timeout=30)
            args = dict(messages=[{"role": "user", "content": "via the gateway"}], max_tokens=8, temperature=0)
            raw = client.chat.completions.with_raw_response.create(model="remote-llama", **args)
            assert raw.headers["x-tollgate-deployment"] == "gpu-worker"
            via = raw.parse()
            assert via.model == "tiny"
            assert via.choices[0].message.content == direct.chat.completions.create(model="tiny", **args).choices[0].message.content
            stream = client.chat.completions.create(model="remote-llama", stream=True, **args)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == via.choices[0].message.content
            client.close()
            direct.close()


def test_worker_refuses_a_bad_folder(tmp_path: Path) -> None:
    binary = require_binary("TOLLGATE_BIN")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    r = subprocess.run(
        [binary, "worker", "--model", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 64
    assert "--model: config.json: unsupported model_type 'gpt2'" in r.stderr


def test_gateway_refuses_a_bad_local_path(tmp_path: Path) -> None:
    binary = require_binary("TOLLGATE_BIN")
    config = tmp_path / "tollgate.yaml"
    config.write_text(
        "database_url: sqlite://t.db\n"
        f"models: [ {{ name: m, deployments: [ {{ provider: local, path: {_q(str(tmp_path / 'missing'))} }} ] }} ]\n"
    )
    r = subprocess.run(
        [binary, "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 64, r.stderr
    assert "models[0].deployments[0].path:" in r.stderr
    assert "is not a folder" in r.stderr
