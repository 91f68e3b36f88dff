#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the project's test fixtures.

Run from the repository root: `python3 fuzz/seeds.py`. The seeds are committed; this
script says where each comes from and remakes them when the fixtures change. Sources:
request bodies of gateway/src/openai.rs and tests/e2e/errors.rs (raw strings) and the
shapes the SDK tests send; the Anthropic stream of providers/anthropic/stream.rs and the
SSE spec's corner cases; the mock upstream's OpenAI stream framing
and its hostile cases (tests/src/upstream*.rs); deploy/*.yaml without comments.
"""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def raw_json_strings(path):
    """Single-line r#"{...}"# literals that are JSON (format strings excluded)."""
    out = []
    for m in re.finditer(r'r#"(\{.*?\})"#', read(path)):
        s = m.group(1)
        if "{{" not in s:
            out.append(s.encode())
    return out


def rust_concat(path, const):
    """The text of `const NAME: &str = concat!("..", ..);` (escapes \\n \\" \\\\ only)."""
    src = read(path)
    body = src[src.index(f"const {const}: &str = concat!(") :]
    body = body[: body.index(");")]
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', body)
    text = "".join(parts)
    return text.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\").encode()


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


ENDPOINTS = ["chat", "completions", "embeddings", "images", "moderations"]


def main():
    # Inputs that once failed a target (`found-*`, copied from target/fuzz/artifacts) stay.
    for d, _, files in os.walk(OUT):
        for f in files:
            if not f.startswith("found-"):
                os.remove(os.path.join(d, f))

    # request: endpoint byte + body.
    chat = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
        {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "hi"},
                       {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
         "max_tokens": 16, "temperature": 0.2, "top_p": 1, "n": 1, "seed": -7},
        {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
         "tools": [{"type": "function", "function": {"name": "weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
         "tool_choice": "auto", "max_completion_tokens": 100},
    ]
    others = {
        1: [{"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 7, "stream": True},
            {"model": "m", "prompt": [[1, 2, 3], [4]], "n": 2}],
        2: [{"model": "text-embedding-3-small", "input": "hello"},
            {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 256,
             "encoding_format": "base64"}, {"model": "e", "input": [[1, 2], [3]]}],
        3: [{"model": "dall-e-3", "prompt": "a red fox", "n": 1, "size": "1024x1024"}],
        4: [{"model": "omni-moderation-latest", "input": "text"},
            {"model": "omni-moderation-latest", "input": [{"type": "text", "text": "x"}]}],
    }
    n = 0
    for body in chat:
        write("request", f"chat-{n}", b"\x00" + json.dumps(body).encode()); n += 1
    for e, bodies in others.items():
        for i, body in enumerate(bodies):
            write("request", f"{ENDPOINTS[e]}-{i}", bytes([e]) + json.dumps(body).encode())
    fixtures = raw_json_strings("gateway/src/openai.rs") + raw_json_strings("tests/e2e/errors.rs")
    for i, body in enumerate(fixtures):
        write("request", f"fixture-{i}", bytes([i % 5]) + body)

    # sse: cut list (2 cuts) + stream.
    anthropic_stream = rust_concat("gateway/src/providers/anthropic/stream.rs", "STREAM")
    # The SSE spec's corner cases: a BOM, CRLF, CR and LF line ends, comments, `id` and
    # `retry`, a field without a colon, a space kept after the first, UTF-8, and an
    # unfinished last event.
    spec = ("\ufeffevent: message_start\r\ndata: {\"a\":1}\r\n\r\n: ping comment\n\n"
            "event:ping\rdata:{\"type\": \"ping\"}\r\rid: 7\nretry: 10\ndata: line one\n"
            "data:  two spaces\nfoo: bar\n\ndata\n\ndata: h\u00e9llo \u2192 \u2713\n\n"
            "event: unfinished\ndata: lost").encode()
    chunk = lambda content, extra=None: json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        **(extra or {})})
    openai_stream = "".join(f"data: {c}\n\n" for c in [
        chunk("Hel", {"usage": None}), chunk("lo", {"usage": None}),
        json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    ]).encode() + b"data: [DONE]\n\n"
    hostile = (f"data: {chunk('Hello')}\n\n".encode()
               + b"data: {\"choices\": [oops\n\nthis line is no sse field\n\n")
    crlf = openai_stream.replace(b"\n", b"\r\n")
    for name, s in [("anthropic", anthropic_stream), ("spec", spec), ("openai", openai_stream),
                    ("hostile", hostile), ("crlf", crlf), ("keepalive", b": ping\n\n" + openai_stream)]:
        write("sse", name, b"\x02\x40\xa0" + s)

    # anthropic: mode byte + input.
    for i, body in enumerate(chat):
        write("anthropic", f"request-{i}", b"\x00" + json.dumps(body).encode())
    write("anthropic", "request-tools", b"\x00" + json.dumps({
        "model": "claude", "messages": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False,
        "stop": ["\n\n"], "top_k": 5, "user": "u1", "response_format": {"type": "text"}}).encode())
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Hi"},
                           {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                           {"type": "thinking", "thinking": "..."}],
               "stop_reason": "tool_use", "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2,
                         "cache_creation_input_tokens": 1}}
    write("anthropic", "answer", b"\x01" + json.dumps(message).encode())
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    write("anthropic", "error-529", b"\x02\x00\x81" + json.dumps(error).encode())
    write("anthropic", "error-429", b"\x02\x00\x1d" + json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}).encode())
    write("anthropic", "stream", b"\x83\x02\x40\xa0" + anthropic_stream)
    write("anthropic", "stream-crlf", b"\x03\x01\x80" + anthropic_stream.replace(b"\n", b"\r\n"))
    write("anthropic", "stream-error", b"\x03\x00" + anthropic_stream[:400]
          + b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")

    # config: the deploy files without comments, and small variations.
    for name in ["tollgate.example.yaml", "tollgate.compose.yaml"]:
        text = read(f"deploy/{name}")
        lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        write("config", name, ("\n".join(lines) + "\n").encode())
    write("config", "env", b"listen: ${LISTEN:-127.0.0.1:8080}\ndatabase_url: ${DB:-sqlite::memory:}\n"
          b"max_body_mb: ${N_BODY}\nmodels:\n  - name: m\n    deployments:\n      - provider: openai\n"
          b"        base_url: http://127.0.0.1:9\n        api_key: ${KEY}\n        timeout_s: ${F}\n")
    write("config", "anthropic", b"models:\n  - name: claude\n    fallbacks: [gpt]\n    deployments:\n"
          b"      - {provider: anthropic, model: claude-x, api_key: k, max_tokens_default: 1024}\n"
          b"  - name: gpt\n    deployments:\n      - {provider: azure, base_url: 'https://a.example', "
          b"deployment: d, api_version: '2024-10-21', api_key: k}\n")
    write("config", "jwt", b"admin:\n  bootstrap_token: ${TOKEN}\n  jwt:\n"
          b"    hs256_secret: 0123456789abcdef0123456789abcdef\n    audience: tollgate\n")

    # keys: Authorization values.
    key = "tg-AbCdEfGhIjKl-0123456789abcdefghijABCDEFGHIJKLMNOPQR"[:3 + 12 + 1 + 32]
    for i, v in enumerate([f"Bearer {key}", key, f"Bearer  {key} ", "Bearer tg-short-secret",
                           f"bearer {key}", f"Bearer {key}-x"]):
        write("keys", f"key-{i}", v.encode())

    # jwt: header values, signed header/claims, PEM text.
    write("jwt", "bootstrap", b"\x00Bearer fuzz-bootstrap-token-0123456789abcdef")
    write("jwt", "data-plane-key", b"\x00Bearer " + key.encode())
    write("jwt", "unsigned", b"\x00Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoiYWRtaW4ifQ.")
    claims = {"sub": "alice", "role": "admin", "aud": "tollgate", "iss": "https://idp.example",
              "exp": 4102444800}
    write("jwt", "signed-admin", b"\x01" + json.dumps(claims).encode())
    write("jwt", "signed-viewer", b"\x01" + json.dumps(
        {**claims, "role": "viewer", "tenant": "t1", "aud": ["x", "tollgate"], "nbf": 1}).encode())
    write("jwt", "signed-header", b"\x01" + json.dumps({"alg": "HS256", "crit": ["b64"]}).encode()
          + b"\x00" + json.dumps(claims).encode())
    write("jwt", "pem", b"\x02-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
          b"-----END PUBLIC KEY-----\n")

    cloud_seeds()
    dialect_seeds()


def cloud_seeds():
    """Gemini, Bedrock and audio-upload seeds, in the shapes the mock upstream sends
    (tests/src/upstream/google.rs, bedrock.rs, audio.rs) and the SDK tests ask."""
    chat = {"model": "m", "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "what is here?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{\"at\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"seen\":\"cat\"}"}],
        "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "max_tokens": 9, "stop": ["x"], "temperature": 0.5}
    write("gemini", "request", b"\x00" + json.dumps(chat).encode())
    write("bedrock", "request", b"\x00" + json.dumps(chat).encode())
    gemini_answer = {
        "candidates": [{"content": {"role": "model", "parts": [
            {"text": "Let me think.", "thought": True}, {"text": "Hello"},
            {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "thoughtsTokenCount": 2,
                          "cachedContentTokenCount": 3, "totalTokenCount": 12},
        "modelVersion": "gemini-2.5-flash-001", "responseId": "r1"}
    write("gemini", "answer", b"\x01" + json.dumps(gemini_answer).encode())
    write("gemini", "error-429", b"\x02\x00\x1d" + json.dumps(
        {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}).encode())
    events = [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}, {"functionCall": {"name": "f", "args": {}}}]},
                         "finishReason": "STOP", "index": 0}],
         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}},
    ]
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    write("gemini", "stream", b"\x83\x02\x30\x90" + sse)
    write("gemini", "stream-error", b"\x03\x00" + sse[:80] + b"data: " + json.dumps(
        {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}).encode() + b"\n\n")
    write("gemini", "embeddings", b"\x04" + json.dumps(
        {"predictions": [{"embeddings": {"values": [0.25, 0.5], "statistics": {"token_count": 3}}}]}).encode())
    converse = {"output": {"message": {"role": "assistant", "content": [
        {"text": "Hi"}, {"toolUse": {"toolUseId": "t", "name": "f", "input": {"q": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7,
                                            "cacheReadInputTokens": 10}, "metrics": {"latencyMs": 12}}
    write("bedrock", "answer", b"\x01" + json.dumps(converse).encode())
    write("bedrock", "error-throttling", b"\x02\x00\x1d\x01" + json.dumps({"message": "Too many requests"}).encode())

    def frame(kind, payload):
        data = json.dumps(payload).encode()
        assert len(data) < 256
        return bytes([kind, len(data)]) + data

    frames = (frame(0, {"role": "assistant"})
              + frame(2, {"contentBlockIndex": 0, "delta": {"text": "Hello"}})
              + frame(3, {"contentBlockIndex": 0})
              + frame(1, {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}})
              + frame(2, {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}})
              + frame(2, {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}})
              + frame(4, {"stopReason": "tool_use"})
              + frame(5, {"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}}))
    write("bedrock", "frames", b"\x83" + frames)
    write("bedrock", "frames-exception", b"\x03" + frames[:60] + frame(7, {"message": "slow down"}))
    write("bedrock", "raw", b"\x04\x02\x10\x40\x00\x00\x00\x10\x00\x00\x00\x00" + b"\x00" * 8)

    def form(fields, boundary=b"b"):
        out = b""
        for name, filename, content in fields:
            disposition = b'form-data; name="' + name + b'"'
            if filename:
                disposition += b'; filename="' + filename + b'"'
            out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
            if filename:
                out += b"Content-Type: audio/wav\r\n"
            out += b"\r\n" + content + b"\r\n"
        return out + b"--" + boundary + b"--\r\n"

    write("multipart", "transcription", b"\x00" + form([
        (b"file", b"a.wav", b"RIFF\x00\x01\r\n--c"), (b"model", None, b"whisper"),
        (b"response_format", None, b"json"), (b"language", None, b"en")]))
    write("multipart", "webkit", b"\x01" + form(
        [(b"model", None, b"gpt-4o-transcribe"), (b"stream", None, b"true"), (b"file", b"x.mp3", b"ID3")],
        b"----WebKitFormBoundary7MA4YWxkTrZu0gW"))
    write("multipart", "no-model", b"\x02" + form([(b"file", b"a.wav", b"x")], b"x-y_z"))


def dialect_seeds():
    """The client dialects (target `dialects`): bodies as the SDK tests send them, a chat
    answer, and a chat stream with text, a tool call and usage."""
    write("dialects", "messages", b"\x00" + json.dumps({
        "model": "claude", "max_tokens": 100, "stream": True,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}).encode())
    write("dialects", "responses", b"\x01" + json.dumps({
        "model": "gpt", "instructions": "be brief", "stream": True, "max_output_tokens": 50,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"},
                                               {"type": "input_image", "image_url": "https://x/y.png"}]},
                  {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}).encode())
    write("dialects", "answer", b"\x02" + json.dumps({
        "id": "c", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Hi", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}}}).encode())
    chunk = lambda delta, finish=None: json.dumps(
        {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    stream = "".join(f"data: {c}\n\n" for c in [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        chunk({}, "tool_calls"),
        json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})]).encode() + b"data: [DONE]\n\n"
    write("dialects", "stream", b"\x03\x02\x30\x90" + stream)
    write("dialects", "stream-error", b"\x03\x00" + f"data: {chunk({'content': 'x'})}\n\n".encode()
          + b'data: {"error":{"message":"boom","type":"server_error"}}\n\n')


if __name__ == "__main__":
    main()
