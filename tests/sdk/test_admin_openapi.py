"""The admin API against its own OpenAPI document, with schemathesis.

Schemathesis reads /admin/openapi.json from a live gateway (its own, on its own database,
so its writes cannot disturb the other tests) and sends generated requests to every
operation: valid ones, invalid ones, missing auth, wrong methods, and stateful sequences
that follow the document's links. A 5xx, or a status, content type, header or body the
document does not declare, fails the test.

Two checks are left out, each for a rule of the API rather than a defect:
- `use_after_free`: deleting a tenant disables it and revoking a key marks it revoked; both
  stay readable (soft delete, so usage and invoices keep their owner).
- `positive_data_acceptance`: a schema-valid body can still be refused with 400 for a
  reason the schema cannot express (a plan name that does not exist, a key's rpm above its
  plan's). Every such 400 is still checked against the declared error schema.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2 as httpx

from conftest import fresh_database, launch_gateway

CONFIG = """listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
database_url: "{database_url}"
admin: {{ bootstrap_token: ${{TOLLGATE_ADMIN_TOKEN}} }}
"""


def test_admin_api_matches_its_openapi_document(tmp_path: Path) -> None:
    with fresh_database("tg_schema") as database_url:
        with launch_gateway(CONFIG.format(database_url=database_url), tmp_path) as gw:
            document = httpx.get(f"{gw.admin_url}/admin/openapi.json", timeout=10)
            assert document.status_code == 200
            assert document.json()["openapi"].startswith("3.1")
            schemathesis = Path(sys.executable).with_name("schemathesis")
            run = subprocess.run(
                [
                    str(schemathesis),
                    "run",
                    f"{gw.admin_url}/admin/openapi.json",
                    "--url",
                    gw.admin_url,
                    "--header",
                    f"Authorization: Bearer {gw.admin_token}",
                    "--checks",
                    "all",
                    "--exclude-checks",
                    "use_after_free,positive_data_acceptance",
                    "--max-examples",
                    "30",
                    "--seed",
                    "20261125",
                    "--request-timeout",
                    "10",
                    "--no-color",
                ],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=tmp_path,
            )
            output = run.stdout + run.stderr
            assert run.returncode == 0, output[-8000:]
            assert "passed" in output.lower() or "success" in output.lower(), output[-4000:]
            # The gateway is still healthy after the barrage.
            assert httpx.get(f"{gw.admin_url}/readyz", timeout=10).status_code == 200
