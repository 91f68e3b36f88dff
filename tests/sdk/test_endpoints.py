"""The other OpenAI endpoints through the gateway: completions, embeddings (float and
base64), image generation, moderations."""

from __future__ import annotations

import array
import base64
import math

import openai

from conftest import MOCK_CONTENT, MockUpstream, marker


def test_completions(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=f"Say hi {m}", max_tokens=16)
    assert resp.object == "text_completion"
    assert resp.model.startswith("gpt-3.5-turbo-instruct")
    assert resp.choices[0].text == MOCK_CONTENT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.completion_tokens == 5

    body = mock_upstream.find_one(m, "/v1/completions")["body"]
    assert body["prompt"] == f"Say hi {m}"
    assert body["max_tokens"] == 16


def test_completions_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=f"Say hi {marker()}", stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == MOCK_CONTENT


def _unit_norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_float(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.embeddings.create(
        model="text-embedding-3-small", input=[f"first {m}", f"second {m}"], encoding_format="float"
    )
    assert resp.object == "list"
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert isinstance(d.embedding, list) and len(d.embedding) == 8
        assert all(isinstance(x, float) for x in d.embedding)
        assert abs(_unit_norm(d.embedding) - 1.0) < 1e-4
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0

    body = mock_upstream.find_one(m, "/v1/embeddings")["body"]
    assert body["encoding_format"] == "float"
    assert body["input"] == [f"first {m}", f"second {m}"]


def test_embeddings_base64_decoded_by_the_sdk(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    # Without encoding_format the SDK asks for base64 and decodes it into floats itself.
    text = f"same input {marker()}"
    decoded = client.embeddings.create(model="text-embedding-3-small", input=text)
    floats = client.embeddings.create(model="text-embedding-3-small", input=text, encoding_format="float")
    a, b = decoded.data[0].embedding, floats.data[0].embedding
    assert isinstance(a, list) and len(a) == len(b) == 8
    assert all(abs(x - y) < 1e-6 for x, y in zip(a, b)), (a, b)

    sent = mock_upstream.find(text, "/v1/embeddings")
    assert sorted(r["body"].get("encoding_format") for r in sent) == ["base64", "float"]


def test_embeddings_base64_raw(client: openai.OpenAI) -> None:
    text = f"raw base64 {marker()}"
    raw = client.embeddings.create(model="text-embedding-3-small", input=text, encoding_format="base64")
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str), "an explicit base64 request returns the string as sent"
    values = array.array("f", base64.b64decode(encoded)).tolist()
    floats = client.embeddings.create(model="text-embedding-3-small", input=text, encoding_format="float")
    assert len(values) == 8
    assert all(abs(x - y) < 1e-6 for x, y in zip(values, floats.data[0].embedding))


def test_images_generate(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.images.generate(model="dall-e-3", prompt=f"a lighthouse {m}", response_format="b64_json")
    assert resp.data and resp.data[0].b64_json
    png = base64.b64decode(resp.data[0].b64_json)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    body = mock_upstream.find_one(m, "/v1/images/generations")["body"]
    assert body["model"] == "dall-e-3"
    assert body["prompt"] == f"a lighthouse {m}"


def test_moderations_create(client: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    m = marker()
    resp = client.moderations.create(model="omni-moderation-latest", input=f"a friendly sentence {m}")
    assert resp.model.startswith("omni-moderation")
    assert len(resp.results) == 1
    result = resp.results[0]
    assert isinstance(result.flagged, bool)
    assert isinstance(result.categories.harassment, bool)
    assert isinstance(result.category_scores.harassment, float)

    body = mock_upstream.find_one(m, "/v1/moderations")["body"]
    assert body["input"] == f"a friendly sentence {m}"
