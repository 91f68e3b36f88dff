"""The operator console (`/console/`) in a real browser: headless Chromium from Debian's
packages, driven by Playwright, against the real `tollgate` binary, a real Postgres
database and the mock upstream; the official OpenAI SDK sends the data-plane traffic.

`scripts/test` runs this file in its `console` step (installing Chromium with apt-get when
it is missing). Screenshots of every page, and the first page's timings, are written to
$TOLLGATE_CONSOLE_ARTEFACTS (default: target/console-screenshots). Outside CI a missing
browser or Playwright skips these tests; with CI=true it fails them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import http.server
import io
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import IN_CI, MockUpstream, _q, fresh_database, launch_gateway, make_client, Gateway

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - reported by the fixture below
    sync_playwright = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("TOLLGATE_CONSOLE_ARTEFACTS", ROOT / "target" / "console-screenshots"))
JWT_SECRET = "console-tests-hs256-secret-0123456789abcdef"
MODEL = "gpt-4o-mini"
OTHER_MODEL = "gpt-4o"
# What Chromium needs to run headless in a container and touch nothing outside the test.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    path = os.environ.get("TOLLGATE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        missing(f"no Chromium at {path} (apt-get install chromium, or set TOLLGATE_TEST_CHROMIUM)")
    return path


def hs256_jwt(claims: dict[str, Any]) -> str:
    """An operator JWT signed with the gateway's configured HS256 secret."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def operator_jwt(role: str, tenant: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": f"{role}-tester", "role": role, "aud": "tollgate", "exp": int(time.time()) + 3600}
    if tenant:
        claims["tenant"] = tenant
    return hs256_jwt(claims)


# ---- fixtures ---------------------------------------------------------------------------


@dataclass
class Console:
    gateway: Gateway
    url: str  # the console URL `tollgate serve` printed

    @property
    def admin(self) -> str:
        return self.gateway.admin_url


@pytest.fixture(scope="module")
def console(mock_upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with fresh_database("tg_console") as database_url:
        config = (
            "listen: 127.0.0.1:0\n"
            "admin_listen: 127.0.0.1:0\n"
            f"database_url: {_q(database_url)}\n"
            'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}", '
            f"jwt: {{ hs256_secret: {_q(JWT_SECRET)}, audience: tollgate }} }}\n"
            "models:\n"
        )
        for name in (MODEL, OTHER_MODEL):
            config += (
                f"  - name: {_q(name)}\n    deployments:\n"
                f"      - {{ provider: openai, base_url: {_q(mock_upstream.base_url)}, api_key: sk-mock, model: {_q(name)} }}\n"
            )
        with launch_gateway(config, tmp_path_factory.mktemp("console-gateway")) as gw:
            # A new operator opens the URL `serve` prints.
            printed = gw.process.wait_for({"url": re.compile(r"tollgate: console at (\S+)")}, 10)
            yield Console(gw, printed["url"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        missing("playwright is not installed (scripts/test installs tests/sdk/requirements.txt)")
    path = chromium_path()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # Playwright gives each launch a fresh temporary profile (--user-data-dir).
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    """A browser context (its own cookies) with one page, recording dialogs and errors."""

    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str, **kwargs: Any) -> None:
        self.page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True, **kwargs)

    def no_errors(self) -> None:
        """No script error and no CSP violation (Chromium logs those as console errors)."""
        assert not self.errors, f"browser console errors: {self.errors}"


def open_tab(browser: Browser) -> Tab:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    tab = Tab(context, page)

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(f"{dialog.type}: {dialog.message}")
        # Confirmations (revoke, disable) are accepted; anything else would be a finding.
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    return tab


def sign_in(browser: Browser, console: Console, token: str) -> Tab:
    tab = open_tab(browser)
    tab.page.goto(console.url)
    tab.page.fill("#token", token)
    tab.page.click("form.signin button[type=submit]")
    tab.page.wait_for_url("**/console/tenants")
    return tab


def admin_tenants(console: Console) -> list[dict[str, Any]]:
    r = console.gateway.admin("GET", "/admin/v1/tenants?limit=100")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def create_tenant(tab: Tab, name: str) -> str:
    """Creates a tenant with the console's form; its id, from the page it lands on."""
    page = tab.page
    page.goto(page.url.split("/console/")[0] + "/console/tenants")
    page.fill("#new-tenant input[name=name]", name)
    page.click("#new-tenant button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/tenants/ten_[A-Za-z0-9]+$"))
    return page.url.rsplit("/", 1)[1]


# ---- tests ------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_session_cookie_and_the_first_page_is_fast(browser: Browser, console: Console) -> None:
    tab = open_tab(browser)
    page = tab.page
    response = page.goto(console.url)
    assert response is not None and page.url.endswith("/console/login?next=%2Fconsole%2F")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    tab.shot("01-sign-in")

    page.fill("#token", "not-the-token")
    page.click("form.signin button[type=submit]")
    assert "invalid admin token" in page.inner_text("[role=alert]")
    assert "not-the-token" not in page.content()
    assert not tab.context.cookies()
    # That page's 401 is the one console error Chromium logs on purpose here.
    assert tab.errors == ["Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    tab.errors.clear()

    page.fill("#token", console.gateway.admin_token)
    page.click("form.signin button[type=submit]")
    page.wait_for_url("**/console/tenants")
    (cookie,) = [c for c in tab.context.cookies() if c["name"] == "tollgate_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert console.gateway.admin_token not in cookie["value"]
    assert page.evaluate("document.cookie") == "", "the session is out of the page's reach"
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0

    # The first page after sign-in, loaded fresh: Navigation Timing from the browser.
    page.goto(console.url.rstrip("/") + "/tenants")
    page.wait_for_selector("#health [data-health=store] b.ok")
    timing = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    nav = json.loads(timing)
    timings = {
        "page": "/console/tenants",
        "response_end_ms": round(nav["responseEnd"], 1),
        "dom_interactive_ms": round(nav["domInteractive"], 1),
        "dom_content_loaded_ms": round(nav["domContentLoadedEventEnd"], 1),
        "load_event_end_ms": round(nav["loadEventEnd"], 1),
        "transfer_bytes": nav.get("transferSize"),
    }
    (ARTEFACTS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"\nconsole first page: {timings}")
    # The health strip is filled in from /readyz and /metrics.
    assert page.inner_text("[data-health=circuits] b") == "2 closed"
    assert page.inner_text("[data-health=redis] b") == "not configured"
    assert "waiting" in page.inner_text("[data-health=spool] b")
    tab.shot("02-tenants")
    tab.no_errors()
    tab.context.close()


def test_tenant_key_spend_invoice_revoke(browser: Browser, console: Console) -> None:
    tab = sign_in(browser, console, console.gateway.admin_token)
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = tab.page
    name = f"acme-{uuid.uuid4().hex[:6]}"
    tenant = create_tenant(tab, name)
    assert page.inner_text("#tenant-name") == name
    assert any(t["id"] == tenant and t["name"] == name for t in admin_tenants(console))

    # A key for one model, with a rate limit and an expiry; its secret is shown once.
    page.fill("#new-key input[name=name]", "prod")
    page.check(f"#new-key input[name=models][value='{MODEL}']")
    page.fill("#new-key input[name=rpm]", "600")
    page.fill("#new-key input[name=expires_at]", "2031-01-31T12:00")
    page.click("#new-key button[type=submit]")
    page.wait_for_selector("#secret-key")
    secret = page.inner_text("#secret-key").strip()
    assert re.fullmatch(r"tg-[A-Za-z0-9]{12}-[A-Za-z0-9]{32}", secret), secret
    page.click("#secret button.copy")
    page.wait_for_selector("#secret button.copy:text-is('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator("#keys tbody tr", has_text="prod")
    assert MODEL in row.inner_text() and "600 rpm" in row.inner_text() and "2031-01-31 12:00 UTC" in row.inner_text()
    tab.shot("03-tenant-keys", mask=[page.locator("#secret-key")])
    page.reload()
    assert page.locator("#secret-key").count() == 0
    assert secret not in page.content(), "the secret is never shown again"
    page.goto(f"{console.admin}/console/tenants")
    page.go_back()
    assert secret not in page.content()

    # A price for the model (USD per 1M tokens), set on the prices page.
    page.goto(f"{console.admin}/console/prices")
    page.fill("#edit input[name=model]", MODEL)
    page.fill("#edit input[name=input]", "150")
    page.fill("#edit input[name=output]", "600")
    page.click("#edit button[type=submit]")
    assert "is saved" in page.inner_text(".flash.notice")
    assert "150.000000" in page.inner_text("#price")
    tab.shot("04-prices")

    # Traffic on the data plane, with the official SDK; each answer says what it cost.
    client = make_client(console.gateway, secret)
    spent = Decimal(0)
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"hello console {i} " * (i + 5)}]
        )
        spent += Decimal(raw.headers["x-tollgate-cost-usd"])
    assert spent > 0
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=OTHER_MODEL, messages=[{"role": "user", "content": "hi"}])

    # The spend page: today's bar holds what the three answers cost (the meter flushes
    # its spool in the background, so reload until the records are in).
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    page.goto(f"{console.admin}/console/tenants/{tenant}/spend")
    deadline = time.monotonic() + 30
    while Decimal(page.get_attribute("#month-cost", "data-usd") or "0") != spent and time.monotonic() < deadline:
        time.sleep(0.3)
        page.reload()
    assert Decimal(page.get_attribute("#month-cost", "data-usd") or "0") == spent
    day = page.locator(f"#cost-chart g.day[data-day='{today}']")
    assert Decimal(day.get_attribute("data-total") or "0") == spent
    bar = day.locator("rect.s0")
    assert bar.count() == 1
    assert (bar.bounding_box() or {}).get("height", 0) > 10, "the bar is drawn"
    assert MODEL in (bar.locator("title").text_content() or "")
    assert page.locator(f"#tokens-chart g.day[data-day='{today}'] rect").count() == 1
    assert MODEL in page.inner_text("ul.legend")
    tab.shot("05-spend")
    page.click(".split a:text-is('key')")
    page.wait_for_url("**split=key")
    assert "prod" in page.inner_text("ul.legend")

    # The invoice: the CSV download's total is the sum of its lines and of the answers' costs.
    page.click("nav.tabs >> text=Invoices")
    assert Decimal(page.get_attribute("#invoice-total", "data-usd") or "0") == spent
    tab.shot("06-invoices")
    with page.expect_download() as download_info:
        page.click("#download-csv")
    download = download_info.value
    assert download.suggested_filename == f"invoice-{tenant}-{today[:7]}.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    lines, (total,) = rows[:-1], rows[-1:]
    assert total["model"] == "total"
    assert [line["model"] for line in lines] == [MODEL]
    assert sum(Decimal(line["cost_usd"]) for line in lines) == Decimal(total["cost_usd"]) == spent
    assert int(total["requests"]) == 3
    shutil.copy(download.path(), ARTEFACTS / "invoice.csv")

    # Revoke: the data plane refuses the key from then on.
    page.click("nav.tabs >> text=Keys")
    page.locator("#keys tbody tr", has_text="prod").locator("button", has_text="Revoke").click()
    page.wait_for_selector(".flash.notice")
    assert "revoked" in page.inner_text(".flash.notice")
    assert "revoked" in page.locator("#keys tbody tr", has_text="prod").inner_text()
    assert any(d.startswith("confirm: Revoke key") for d in tab.dialogs)
    deadline = time.monotonic() + 10
    refused = None
    while refused is None and time.monotonic() < deadline:
        try:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "still there?"}])
            time.sleep(0.2)
        except openai.AuthenticationError as e:
            refused = e
    assert refused is not None and refused.status_code == 401, "the revoked key is refused"

    # Disable the tenant from its page.
    page.click("button:text-is('Disable')")
    page.wait_for_selector("h1 .badge.off")
    assert [t["disabled"] for t in admin_tenants(console) if t["id"] == tenant] == [True]

    page.goto(f"{console.admin}/console/plans")
    tab.shot("07-plans")
    assert not [d for d in tab.dialogs if not d.startswith("confirm:")]
    tab.no_errors()
    client.close()
    tab.context.close()


XSS = "<img src=x onerror=alert(1)>"


def test_names_with_markup_render_as_text(browser: Browser, console: Console) -> None:
    tab = sign_in(browser, console, console.gateway.admin_token)
    page = tab.page
    tenant = create_tenant(tab, XSS)
    assert page.inner_text("#tenant-name") == XSS
    page.fill("#new-key input[name=name]", '"><script>alert(2)</script>')
    page.fill("#new-key input[name=models_other]", "<svg onload=alert(3)>")
    page.click("#new-key button[type=submit]")
    page.wait_for_selector("#secret-key")
    assert page.inner_text("#keys td.key-name") == '"><script>alert(2)</script>'
    for path in ["/console/tenants", f"/console/tenants/{tenant}", f"/console/tenants/{tenant}/spend", f"/console/tenants/{tenant}/invoices"]:
        page.goto(console.admin + path)
        assert XSS in page.inner_text("body"), path
        assert page.locator("img[src=x], svg[onload]").count() == 0, path
        assert page.locator("main script").count() == 0, path
    page.goto(f"{console.admin}/console/tenants?q=%3Cimg")
    assert page.locator("#tenants a.tenant-name", has_text=XSS).count() == 1
    tab.shot("08-markup-as-text")
    assert tab.dialogs == [], f"a script ran: {tab.dialogs}"
    tab.no_errors()
    tab.context.close()


class _AttackerSite:
    """A page on another site (`localhost` vs the console's `127.0.0.1`) that tries to
    post a form to the console and to frame it."""

    def __init__(self, console: Console) -> None:
        target = console.admin
        page = f"""<!doctype html><html><body>
<form id=f method=post action="{target}/console/tenants">
<input name=name value=csrf-victim><input name=csrf value=guessed></form>
<iframe id=frame src="{target}/console/tenants" width=400 height=200></iframe>
<script>document.getElementById('f').submit();</script></body></html>""".encode()
        frame_only = f"""<!doctype html><html><body>
<iframe id=frame src="{target}/console/tenants" width=400 height=200></iframe></body></html>""".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = frame_only if self.path.startswith("/frame") else page
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cross_site_requests_and_forged_forms_are_refused(browser: Browser, console: Console) -> None:
    tab = sign_in(browser, console, console.gateway.admin_token)
    page = tab.page
    attacker = _AttackerSite(console)
    try:
        # Another site's page auto-submits a form to the console: the browser keeps the
        # SameSite=Strict cookie to itself and the console refuses the cross-site post.
        page.goto(attacker.url + "/")
        page.wait_for_url(re.compile(re.escape(console.admin) + r"/console/.*"))
        assert page.url.startswith(f"{console.admin}/console/login") or "Refused" in page.inner_text("body")
        # The console cannot be framed by it either.
        page.goto(attacker.url + "/frame")
        frame = page.frame_locator("#frame")
        framed = [f for f in page.frames if f.url.startswith(console.admin)]
        assert not framed or all(f.locator("#tenants, form.signin").count() == 0 for f in framed)
        assert frame.locator("form.signin, #tenants").count() == 0
    finally:
        attacker.close()

    # From the console's own origin, with the session cookie, but without the form's
    # CSRF token, or with a wrong one: refused.
    page.goto(f"{console.admin}/console/tenants")
    statuses = page.evaluate(
        """async () => {
            const post = (body) => fetch('/console/tenants', {method: 'POST', body: new URLSearchParams(body)})
                .then(r => r.status);
            return [await post({name: 'csrf-none'}), await post({name: 'csrf-wrong', csrf: 'x'.repeat(43)})];
        }"""
    )
    assert statuses == [403, 403]
    names = {t["name"] for t in admin_tenants(console)}
    assert not names & {"csrf-victim", "csrf-none", "csrf-wrong"}
    # The same form with the page's own token works: the refusals were about the token.
    token = page.get_attribute("input[name=csrf]", "value")
    status = page.evaluate(
        "async (t) => (await fetch('/console/tenants', {method: 'POST', body: new URLSearchParams({name: 'csrf-ok', csrf: t})})).status",
        token,
    )
    assert status == 200  # fetch followed the 303 to the new tenant's page
    assert "csrf-ok" in {t["name"] for t in admin_tenants(console)}
    tab.context.close()


def test_a_viewer_sees_everything_and_can_change_nothing(browser: Browser, console: Console) -> None:
    r = console.gateway.admin("POST", "/admin/v1/tenants", json={"name": f"viewed-{uuid.uuid4().hex[:6]}"})
    assert r.status_code == 201, r.text
    tenant = r.json()
    r = console.gateway.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "existing"})
    assert r.status_code == 201, r.text
    before = len(admin_tenants(console))

    tab = sign_in(browser, console, operator_jwt("viewer"))
    page = tab.page
    assert "viewer" in page.inner_text("#operator")
    create = page.locator("#new-tenant button[type=submit]")
    assert create.is_disabled()
    assert "viewer role" in (create.get_attribute("title") or "")
    assert "Read-only" in page.inner_text("#new-tenant .why")
    page.click(f"text={tenant['name']}")
    assert page.locator("#new-key button[type=submit]").is_disabled()
    row = page.locator("#keys tbody tr", has_text="existing")
    assert row.locator("button", has_text="Revoke").is_disabled()
    assert row.locator("button", has_text="Rotate").is_disabled()
    assert "Read-only" in page.inner_text("main")
    tab.shot("09-viewer")

    # Enabling the button by hand changes nothing: the admin API refuses the viewer.
    page.evaluate("document.querySelectorAll('button[disabled]').forEach(b => b.disabled = false)")
    page.fill("#new-key input[name=name]", "sneaky")
    page.click("#new-key button[type=submit]")
    assert "read-only" in page.inner_text(".flash.error")
    keys = console.gateway.admin("GET", f"/admin/v1/keys?tenant={tenant['id']}").json()["data"]
    assert [k["name"] for k in keys] == ["existing"]
    assert len(admin_tenants(console)) == before
    tab.no_errors()
    tab.context.close()


def test_a_tenant_scoped_operator_sees_only_its_tenant(browser: Browser, console: Console) -> None:
    own, other = [
        console.gateway.admin("POST", "/admin/v1/tenants", json={"name": f"{n}-{uuid.uuid4().hex[:6]}"}).json()
        for n in ("scoped", "not-mine")
    ]
    tab = sign_in(browser, console, operator_jwt("admin", tenant=own["id"]))
    page = tab.page
    names = page.locator("#tenants a.tenant-name").all_inner_texts()
    assert names == [own["name"]]
    create = page.locator("#new-tenant button[type=submit]")
    assert create.is_disabled()
    assert "limited to tenant" in (create.get_attribute("title") or "")
    for path in ["", "/spend", "/invoices"]:
        page.goto(f"{console.admin}/console/tenants/{other['id']}{path}")
        assert "no tenant with id" in page.inner_text("main"), path
        assert other["name"] not in page.inner_text("main"), path
    tab.context.close()
