"""Keys from the admin API, and /v1/models through the SDK."""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from conftest import CONFIGURED_MODELS

KEY_RE = re.compile(r"^tg-[0-9A-Za-z]{12}-[0-9A-Za-z]{32}$")


def test_admin_creates_keys_in_the_documented_shape(
    tenant: dict[str, Any], api_key: dict[str, Any], restricted_key: dict[str, Any]
) -> None:
    assert {"id", "name", "plan", "created_at", "disabled"} <= tenant.keys(), tenant
    assert tenant["disabled"] is False
    for k in (api_key, restricted_key):
        assert KEY_RE.match(k["key"]), f"key {k['key']!r} is not tg-<12 base62>-<32 base62>"
        assert k["id"] and k["prefix"]
        assert k["key"].startswith(k["prefix"]), (k["prefix"], k["key"])
        # The secret is only in `key`: no other field carries it or a hash of it.
        others = {n: v for n, v in k.items() if n != "key"}
        assert k["key"] not in repr(others)
        assert not any("hash" in n for n in k), k
    assert api_key["key"] != restricted_key["key"]


def test_models_list_has_every_configured_model(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    ids = [m.id for m in models]
    missing = set(CONFIGURED_MODELS) - set(ids)
    assert not missing, f"missing from /v1/models: {missing} (got {ids})"
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    assert all(m.object == "model" for m in models)


def test_models_retrieve(client: openai.OpenAI) -> None:
    m = client.models.retrieve("gpt-4o-mini")
    assert m.id == "gpt-4o-mini"
    assert m.object == "model"


def test_models_retrieve_unknown_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.status_code == 404


def test_restricted_key_sees_only_its_models(restricted_client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in restricted_client.models.list())
    assert ids == ["gpt-4o-mini"]
    with pytest.raises(openai.APIStatusError) as e:
        restricted_client.models.retrieve("restricted-model")
    assert e.value.status_code in (403, 404)
