"""Files and batches through the official OpenAI SDK against the gateway's passthrough:
uploads (multipart) reach the upstream intact, and one tenant never sees or touches
another tenant's objects, even though the upstream keeps them all in one account.

The passthrough runs on a gateway of its own (same mock upstream, its own database).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from conftest import Gateway, MockUpstream, _q, fresh_database, launch_gateway, make_client


@pytest.fixture(scope="module")
def passthrough_gateway(
    mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with fresh_database("tg_sdk_passthrough") as database_url:
        config = "".join(
            [
                "listen: 127.0.0.1:0\n",
                "admin_listen: 127.0.0.1:0\n",
                f"database_url: {_q(database_url)}\n",
                'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
                "passthrough:\n",
                f"  deployment: {{ provider: openai, base_url: {_q(mock_upstream.base_url)}, "
                "api_key: sk-files-upstream, name: files-upstream }\n",
            ]
        )
        with launch_gateway(config, tmp_path_factory.mktemp("passthrough-gateway")) as gw:
            yield gw


def tenant_client(gw: Gateway) -> openai.OpenAI:
    r = gw.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-pt-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, r.text
    r = gw.admin("POST", f"/admin/v1/tenants/{r.json()['id']}/keys", json={"name": "files"})
    assert r.status_code == 201, r.text
    return make_client(gw, r.json()["key"])


def test_files_and_batches_are_scoped_per_tenant(passthrough_gateway: Gateway) -> None:
    a = tenant_client(passthrough_gateway)
    b = tenant_client(passthrough_gateway)
    try:
        content = b'{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
        raw = a.files.with_raw_response.create(file=("batch.jsonl", content), purpose="batch")
        assert raw.headers["x-tollgate-deployment"] == "files-upstream"
        file_a = raw.parse()
        assert file_a.object == "file"
        assert file_a.bytes == len(content)
        assert file_a.filename == "batch.jsonl"
        file_b = b.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")

        assert a.files.retrieve(file_a.id).id == file_a.id
        assert a.files.content(file_a.id).read() == content
        assert [f.id for f in a.files.list()] == [file_a.id]
        # Tenant B sees only its own file and cannot reach A's.
        assert [f.id for f in b.files.list()] == [file_b.id]
        with pytest.raises(openai.NotFoundError):
            b.files.retrieve(file_a.id)
        with pytest.raises(openai.NotFoundError):
            b.files.delete(file_a.id)
        with pytest.raises(openai.NotFoundError):
            b.batches.create(input_file_id=file_a.id, endpoint="/v1/chat/completions", completion_window="24h")

        batch = a.batches.create(
            input_file_id=file_a.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.object == "batch"
        assert batch.status == "validating"
        assert a.batches.retrieve(batch.id).input_file_id == file_a.id
        assert [x.id for x in a.batches.list()] == [batch.id]
        assert list(b.batches.list()) == []
        with pytest.raises(openai.NotFoundError):
            b.batches.retrieve(batch.id)

        deleted = a.files.delete(file_a.id)
        assert deleted.deleted is True
        with pytest.raises(openai.NotFoundError):
            a.files.retrieve(file_a.id)
    finally:
        a.close()
        b.close()
