"""Fixtures for the SDK end-to-end tests: the real `tollgate` binary, a real Postgres
database, the mock upstream, and the official OpenAI Python SDK as the client.

Run through `scripts/test`, which starts a throwaway Postgres, builds the binaries and sets
TOLLGATE_TEST_POSTGRES_URL, TOLLGATE_BIN and MOCK_UPSTREAM_BIN. Outside CI a missing piece
skips the tests; with CI=true it fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

try:  # openai 3.x ships httpx2; older releases used httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

# Loopback traffic must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost"]))

STARTUP_TIMEOUT_S = 60.0
UPSTREAM_KEY = "sk-upstream-secret"
MOCK_CONTENT = "Hello from the mock upstream."

# Client-facing model names; all but dead-model are served by the mock upstream.
MOCK_MODELS = [
    "gpt-4o-mini",
    "text-embedding-3-small",
    "dall-e-3",
    "omni-moderation-latest",
    "gpt-3.5-turbo-instruct",
    "restricted-model",
]
DEAD_MODEL = "dead-model"
CONFIGURED_MODELS = MOCK_MODELS + [DEAD_MODEL]
# Upstream model each client-facing name maps to.
UPSTREAM_MODEL = {name: name for name in MOCK_MODELS}
UPSTREAM_MODEL["restricted-model"] = "gpt-4o"
UPSTREAM_MODEL[DEAD_MODEL] = "gpt-4o-mini"


def require_env(var: str) -> str:
    value = os.environ.get(var, "")
    if value:
        return value
    message = f"{var} is not set (run the tests through scripts/test)"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(var: str) -> str:
    path = require_env(var)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        message = f"{var}={path} is not an executable file (build it: cargo build --workspace --bins)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marker() -> str:
    """A unique string to put in a request, to find it again in the mock's records."""
    return f"sdk-{uuid.uuid4().hex[:16]}"


# ---- processes ------------------------------------------------------------------------

_PROCESSES: list["Process"] = []


@dataclass
class Process:
    """A child process whose stdout is read line by line (so it never blocks on a full
    pipe) and whose stderr goes to a log file, shown when something fails."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
            text=True,
            bufsize=1,
        )
        self._eof = False
        threading.Thread(target=self._read, name=f"{self.name}-stdout", daemon=True).start()
        _PROCESSES.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, patterns: dict[str, re.Pattern[str]], timeout: float) -> dict[str, str]:
        """Waits until each pattern matched a stdout line; returns the first groups."""
        found: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    for key, pat in patterns.items():
                        m = pat.search(line)
                        if m and key not in found:
                            found[key] = m.group(1)
                if len(found) == len(patterns):
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        self.stop()
        why = "exited" if self.proc.poll() is not None else f"printed no listen line in {timeout:.0f}s"
        pytest.fail(
            f"{self.name} did not start ({why}, exit code {self.proc.poll()}).\n"
            f"command: {' '.join(self.argv)}\n"
            f"--- stdout ---\n" + "\n".join(self.lines[-50:]) + "\n"
            f"--- stderr ({self.log_path}) ---\n{self.stderr_tail()}",
            pytrace=False,
        )

    def stderr_tail(self, max_chars: int = 6000) -> str:
        try:
            if not self._log.closed:
                self._log.flush()
            text = self.log_path.read_text(errors="replace")
        except (OSError, ValueError) as e:
            return f"(cannot read: {e})"
        return text[-max_chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """After a failed run, show what the servers wrote to stderr (their logs)."""
    if exitstatus == 0:
        return
    for p in _PROCESSES:
        terminalreporter.section(f"{p.name} stderr (last lines, {p.log_path})")
        terminalreporter.write_line(p.stderr_tail(4000) or "(empty)")


# ---- the mock upstream ----------------------------------------------------------------


@dataclass
class MockUpstream:
    url: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def requests(self) -> list[dict[str, Any]]:
        """Every request the mock received: {method, path, headers: [[name, value]], body}."""
        r = httpx.get(f"{self.url}/_mock/requests", timeout=10)
        r.raise_for_status()
        return r.json()

    def find(self, needle: str, path: str | None = None) -> list[dict[str, Any]]:
        """The recorded requests whose body contains `needle` (optionally on `path`)."""
        out = []
        for req in self.requests():
            if path is not None and req["path"].split("?")[0] != path:
                continue
            if needle in json.dumps(req.get("body")):
                out.append(req)
        return out

    def find_one(self, needle: str, path: str | None = None) -> dict[str, Any]:
        found = self.find(needle, path)
        assert found, f"the upstream received no request with {needle!r} (path {path})"
        return found[-1]


def header(req: dict[str, Any], name: str) -> str | None:
    for n, v in req["headers"]:
        if n.lower() == name.lower():
            return v
    return None


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockUpstream]:
    binary = require_binary("MOCK_UPSTREAM_BIN")
    log = tmp_path_factory.mktemp("mock-upstream") / "stderr.log"
    p = Process("mock-upstream", [binary, "--listen", "127.0.0.1:0"], log)
    found = p.wait_for(
        {"url": re.compile(r"mock-upstream listening on (http://\S+)")}, STARTUP_TIMEOUT_S
    )
    yield MockUpstream(found["url"].rstrip("/"))
    p.stop()


# ---- Postgres -------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(prefix: str = "tg_sdk") -> Iterator[str]:
    """A fresh, empty Postgres database on the test server; dropped afterwards."""
    server = require_env("TOLLGATE_TEST_POSTGRES_URL")
    import psycopg

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(server)
    yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as e:  # the server is thrown away anyway
        print(f"note: could not drop {name}: {e}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, empty Postgres database for this session's gateway."""
    with fresh_database() as url:
        yield url


# ---- the gateway ----------------------------------------------------------------------


@dataclass
class Gateway:
    url: str  # data plane, http://127.0.0.1:PORT
    admin_url: str  # admin plane
    admin_token: str
    dead_port: int
    process: Process

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.admin_url}{path}", headers=headers, timeout=30, **kwargs)


def _q(value: str) -> str:
    """A YAML scalar: JSON strings are valid YAML double-quoted strings."""
    return json.dumps(value)


def gateway_config(mock: MockUpstream, database_url: str, dead_port: int) -> str:
    def deployment(base_url: str, model: str) -> str:
        return (
            f"      - {{ provider: openai, base_url: {_q(base_url)}, api_key: {_q(UPSTREAM_KEY)}, "
            f"model: {_q(model)}, timeout_s: 2 }}\n"
        )

    lines = [
        "listen: 127.0.0.1:0\n",
        "admin_listen: 127.0.0.1:0\n",
        f"database_url: {_q(database_url)}\n",
        # Quoted: unquoted `${...}` is not valid inside a YAML flow mapping.
        'admin: { bootstrap_token: "${TOLLGATE_ADMIN_TOKEN}" }\n',
        "models:\n",
    ]
    for name in MOCK_MODELS:
        lines += [f"  - name: {_q(name)}\n", "    deployments:\n", deployment(mock.base_url, UPSTREAM_MODEL[name])]
    # Nothing listens on dead_port: connections are refused, the gateway answers 502.
    lines += [
        f"  - name: {_q(DEAD_MODEL)}\n",
        "    deployments:\n",
        deployment(f"http://127.0.0.1:{dead_port}/v1", UPSTREAM_MODEL[DEAD_MODEL]),
    ]
    return "".join(lines)


@contextlib.contextmanager
def launch_gateway(config_text: str, workdir: Path, dead_port: int = 0) -> Iterator[Gateway]:
    """Runs `tollgate serve` with `config_text` (which reads TOLLGATE_ADMIN_TOKEN) in
    `workdir` until the block ends."""
    binary = require_binary("TOLLGATE_BIN")
    config = workdir / "tollgate.yaml"
    config.write_text(config_text)
    token = f"admin-{secrets.token_urlsafe(24)}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TOLLGATE_CONFIG", "TOLLGATE_DATABASE_URL", "TOLLGATE_LISTEN", "TOLLGATE_ADMIN_LISTEN")
    }
    env["TOLLGATE_ADMIN_TOKEN"] = token
    env.setdefault("TOLLGATE_LOG", "info")
    p = Process(
        "tollgate",
        [binary, "serve", "--config", str(config)],
        workdir / "stderr.log",
        env=env,
        cwd=workdir,
    )
    try:
        found = p.wait_for(
            {
                "data": re.compile(r"tollgate: data plane listening on (http://\S+)"),
                "admin": re.compile(r"tollgate: admin plane listening on (http://\S+)"),
            },
            STARTUP_TIMEOUT_S,
        )
        yield Gateway(found["data"].rstrip("/"), found["admin"].rstrip("/"), token, dead_port, p)
    finally:
        p.stop()


@pytest.fixture(scope="session")
def gateway(
    mock_upstream: MockUpstream, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    dead_port = free_port()
    config = gateway_config(mock_upstream, database_url, dead_port)
    with launch_gateway(config, tmp_path_factory.mktemp("gateway"), dead_port) as gw:
        yield gw


# ---- tenants, keys, clients -------------------------------------------------------------


@pytest.fixture(scope="session")
def tenant(gateway: Gateway) -> dict[str, Any]:
    r = gateway.admin("POST", "/admin/v1/tenants", json={"name": f"sdk-tests-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201, f"create tenant: {r.status_code} {r.text}"
    return r.json()


def _create_key(gateway: Gateway, tenant: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    r = gateway.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", json=body)
    assert r.status_code == 201, f"create key: {r.status_code} {r.text}"
    return r.json()


@pytest.fixture(scope="session")
def api_key(gateway: Gateway, tenant: dict[str, Any]) -> dict[str, Any]:
    """An unrestricted key: the admin API's whole answer, plaintext `key` included."""
    return _create_key(gateway, tenant, {"name": "sdk-unrestricted"})


@pytest.fixture(scope="session")
def restricted_key(gateway: Gateway, tenant: dict[str, Any]) -> dict[str, Any]:
    """A key that may use gpt-4o-mini only."""
    return _create_key(gateway, tenant, {"name": "sdk-restricted", "models": ["gpt-4o-mini"]})


def make_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="session")
def client(gateway: Gateway, api_key: dict[str, Any]) -> Iterator[openai.OpenAI]:
    c = make_client(gateway, api_key["key"])
    yield c
    c.close()


@pytest.fixture(scope="session")
def restricted_client(gateway: Gateway, restricted_key: dict[str, Any]) -> Iterator[openai.OpenAI]:
    c = make_client(gateway, restricted_key["key"])
    yield c
    c.close()


@pytest.fixture()
def raw(gateway: Gateway, api_key: dict[str, Any]) -> Iterator[httpx.Client]:
    """A plain HTTP client on the data plane, authenticated with the unrestricted key."""
    with httpx.Client(
        base_url=gateway.url,
        headers={"Authorization": f"Bearer {api_key['key']}"},
        timeout=30,
        trust_env=False,
    ) as c:
        yield c
