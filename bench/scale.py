"""Tollgate's scale benchmark (issue 10, "Scale"): gateway overhead with 1 key vs 100,000
keys in the store, and the admin usage queries over 10 million ledger rows.

Run it through `bench/scale`, which builds the release binaries and starts a throwaway
Postgres and Redis (scripts/lib/services.sh). Everything runs on the real binary against
real Postgres and Redis; the only fake is the mock upstream.

Keys phase: the same fixed-rate load (scale-load: open loop, latency from dispatch) against
a fresh gateway process for each case:
  a) 1 key in the store;
  b) 100k keys in the store (1,000 tenants), every request with the same key;
  c) 100k keys, every request a different key (a cold auth cache: one store lookup per
     request, and a first quota check per key and tenant);
  d) 100k keys, requests rotating over 1,000 of them (a warm cache with many entries).
Ledger phase: usage_records (partitioned by month), usage_request_ids and the usage_daily
rollup filled by SQL with 10M records over 3 months, then the admin API's usage queries
and invoices timed through the gateway's admin listener.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import http.client
import json
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ADMIN_TOKEN = "bench-admin-token"
BASE62 = string.ascii_letters + string.digits
MODELS = [
    "gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "o3-mini",
    "claude-sonnet", "claude-haiku", "llama-3.1-8b", "llama-3.1-70b", "mistral-large",
]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 16}


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


class Psql:
    """psql against the bench database; every statement's wall time is returned."""

    def __init__(self, psql: str, url: str) -> None:
        self.psql, self.url = psql, url

    def run(self, sql: str, stdin: bytes | None = None) -> tuple[str, float]:
        start = time.perf_counter()
        out = subprocess.run(
            [self.psql, self.url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            input=stdin, capture_output=True, check=False,
        )
        took = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"bench: psql failed: {out.stderr.decode()}\n{sql}")
        return out.stdout.decode().strip(), took

    def script(self, sql: str) -> float:
        start = time.perf_counter()
        out = subprocess.run(
            [self.psql, self.url, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            input=sql.encode(), capture_output=True, check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"bench: psql failed: {out.stderr.decode()}")
        return time.perf_counter() - start


class Gateway:
    def __init__(self, args: argparse.Namespace, work: Path, db_url: str, mock_port: int) -> None:
        self.args, self.work = args, work
        self.port, self.admin_port = free_port(), free_port()
        self.config = work / "tollgate.yaml"
        self.config.write_text(
            f"""listen: 127.0.0.1:{self.port}
admin_listen: 127.0.0.1:{self.admin_port}
database_url: {db_url}
redis_url: {args.redis_url}
spool_dir: {work}/spool
admin: {{ bootstrap_token: {ADMIN_TOKEN} }}
cache: {{ enabled: true, ttl_s: 600 }}
meter: {{ retention_days: null }}
models:
  - name: gpt-4o-mini
    deployments:
      - {{ provider: openai, base_url: "http://127.0.0.1:{mock_port}/v1", api_key: sk-bench, model: gpt-4o-mini }}
prices:
  gpt-4o-mini: {{ input: 0.15, output: 0.60, cached_input: 0.075 }}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log_file = open(self.work / f"tollgate-{self.runs}.log", "wb")
        self.proc = subprocess.Popen(
            [self.args.tollgate, "serve", "--config", str(self.config)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "TOLLGATE_LOG": "warn"},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: tollgate exited; see {log_file.name}")
            try:
                status, _ = self.admin("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("bench: tollgate not ready within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            try:
                return resp.status, json.loads(data) if data else None
            except ValueError:
                return resp.status, data
        finally:
            conn.close()


def load(args: argparse.Namespace, gw: Gateway, keys_file: Path, keys: int, offset: int = 0,
         rate: int | None = None, seconds: int | None = None) -> dict[str, Any]:
    cmd = [
        args.loadgen, "--url", f"http://127.0.0.1:{gw.port}/v1/chat/completions",
        "--keys-file", str(keys_file), "--keys", str(keys), "--offset", str(offset),
        "--rate", str(rate or args.rate), "--seconds", str(seconds or args.seconds),
        "--connections", "16", "--body", json.dumps(CHAT), "--header", "Cache-Control: no-cache",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench: scale-load failed: {out.stderr}")
    return json.loads(out.stdout)


def bulk_keys(db: Psql, work: Path, n_tenants: int, n_keys: int, plan: str) -> list[str]:
    """Adds tenants and keys by COPY until the store holds n_tenants and n_keys; returns
    the plaintext keys added, in insertion order. Secrets are hashed the way the gateway
    verifies them (admin/src/keys.rs): SHA-256 of the 32-character secret."""
    have_t = int(db.run("SELECT count(*) FROM tenants")[0])
    have_k = int(db.run("SELECT count(*) FROM api_keys")[0])
    now = int(time.time())
    tenant_ids = [f"ten_{b62(16)}" for _ in range(max(0, n_tenants - have_t))]
    existing = db.run("SELECT id FROM tenants ORDER BY id")[0].split()
    all_tenants = existing + tenant_ids
    t_rows = "".join(f"{t}\tbench-{i}\t{plan}\t0\t{now}\n" for i, t in enumerate(tenant_ids, start=have_t))
    took_t = db.run("\\copy tenants (id, name, plan, disabled, created_at) FROM STDIN", t_rows.encode())[1]
    plaintext: list[str] = []
    k_rows = []
    for i in range(max(0, n_keys - have_k)):
        public_id, secret = b62(12), b62(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        tenant = all_tenants[i % len(all_tenants)]
        k_rows.append(f"{public_id}\t{tenant}\tk{i}\ttg-{public_id}\t\\\\x{digest}\t[]\t{now}\n")
        plaintext.append(f"tg-{public_id}-{secret}")
    took_k = db.run("\\copy api_keys (id, tenant_id, name, prefix, secret_hash, models, created_at) FROM STDIN",
                    "".join(k_rows).encode())[1]
    db.run("ANALYZE tenants; ANALYZE api_keys")
    log(f"added {len(tenant_ids)} tenants ({took_t:.1f} s) and {len(plaintext)} keys ({took_k:.1f} s) by COPY")
    return plaintext


def keys_phase(args: argparse.Namespace, db: Psql, gw: Gateway, work: Path) -> dict[str, Any]:
    gw.start()
    gw.admin("PUT", "/admin/v1/plans/bench", {
        "rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrent": 100_000,
        "monthly_budget_usd": "1000000.000000", "monthly_tokens": None,
    })
    status, tenant = gw.admin("POST", "/admin/v1/tenants", {"name": "bench", "plan": "bench"})
    if status != 201 and status != 200:
        raise SystemExit(f"bench: tenant create: {status} {tenant}")
    status, created = gw.admin("POST", f"/admin/v1/tenants/{tenant['id']}/keys", {"name": "bench"})
    one = work / "one-key.txt"
    one.write_text(created["key"] + "\n")
    cases: dict[str, Any] = {}

    def measure(name: str, keys_file: Path, keys: int, warm_keys: int) -> None:
        # Warm-up: connections, allocator and the one key (or the hot set of keys).
        load(args, gw, keys_file if warm_keys > 1 else one, max(1, warm_keys), 0,
             rate=args.rate, seconds=max(3, (warm_keys + args.rate - 1) // args.rate + 1))
        r = load(args, gw, keys_file, keys)
        r["store_keys"] = int(db.run("SELECT count(*) FROM api_keys")[0])
        cases[name] = r
        log(f"{name}: p50 {r['p50_ms']:.3f} p90 {r['p90_ms']:.3f} p99 {r['p99_ms']:.3f} ms, ok {r['ok']}/{r['requests']}")

    measure("a_1_key", one, 1, 1)
    gw.stop()

    added = bulk_keys(db, work, args.tenants, args.keys, "bench")
    many = work / "keys.txt"
    random.Random(7).shuffle(added)  # rotation order not the tenant order
    many.write_text("\n".join(added) + "\n")

    gw.start()
    measure("b_many_keys_one_used", one, 1, 1)
    gw.stop()
    gw.start()
    # Every request a key this process has not seen: warm-up with the one key only.
    measure("c_many_keys_each_request_new", many, 0, 1)
    gw.stop()
    gw.start()
    hot = min(args.hot_keys, len(added))
    measure(f"d_many_keys_rotating_{hot}", many, hot, hot)
    gw.stop()
    return cases


def month_start(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def add_months(year: int, month: int, n: int) -> tuple[int, int]:
    m = year * 12 + (month - 1) + n
    return m // 12, m % 12 + 1


def ledger_fill(args: argparse.Namespace, db: Psql) -> dict[str, Any]:
    """usage_records over the two months before this one and this month up to now, the
    ids in usage_request_ids and the usage_daily rollup, all consistent; timed per step."""
    now = time.gmtime()
    y0, m0 = add_months(now.tm_year, now.tm_mon, -2)
    start_ms = month_start(y0, m0)
    end_ms = int(time.time() * 1000)
    span = end_ms - start_ms
    steps: dict[str, float] = {}
    setup = ["SET work_mem = '256MB'", "SET maintenance_work_mem = '512MB'"]
    for i in range(4):  # the three months, and the next one as the store does
        y, m = add_months(y0, m0, i)
        e = add_months(y, m, 1)
        setup.append(
            f"CREATE TABLE IF NOT EXISTS usage_records_p{y:04d}{m:02d} PARTITION OF usage_records "
            f"FOR VALUES FROM ({month_start(y, m)}) TO ({month_start(*e)})"
        )
    db.script(";\n".join(setup) + ";\n")
    n_keys = int(db.run("SELECT count(*) FROM api_keys")[0])
    models = ", ".join(f"({i}, '{m}')" for i, m in enumerate(MODELS))
    prelude = f"""
SET work_mem = '256MB';
SET maintenance_work_mem = '512MB';
CREATE TEMP TABLE bench_keys AS
    SELECT (row_number() OVER (ORDER BY id))::int - 1 AS idx, id, tenant_id FROM api_keys;
CREATE UNIQUE INDEX ON bench_keys (idx);
CREATE TEMP TABLE bench_models (idx int PRIMARY KEY, name text COLLATE "C");
INSERT INTO bench_models VALUES {models};
ANALYZE bench_keys; ANALYZE bench_models;
"""
    chunk = 1_000_000
    total = 0.0
    done = 0
    while done < args.rows:
        lo, hi = done + 1, min(args.rows, done + chunk)
        # Per record: a random key (its tenant with it); 70% the key's usual model, else any;
        # tokens 50..2049 in, 10..509 out, priced like gpt-4o-mini; a uniform time.
        took = db.script(prelude + f"""
INSERT INTO usage_records (request_id, tenant_id, key_id, model, deployment, endpoint, status,
    input_tokens, output_tokens, cached_tokens, images, cost_micro_usd, cache_hit, usage_reported,
    client_disconnected, latency_ms, ttft_ms, created_at_ms)
SELECT 'req_bench_' || s.g, k.tenant_id, k.id, m.name, m.name, 'chat_completions', 200,
    s.inp, s.outp, 0, 0, (s.inp * 150000 + s.outp * 600000 + 500000) / 1000000, 0, 1, 0,
    200 + s.inp % 800, NULL, s.t
FROM (
    SELECT g, kidx, CASE WHEN r < 0.7 THEN kidx % 10 ELSE floor(r2 * 10)::int END AS midx,
           inp, outp, t
    FROM (SELECT g, floor(random() * {n_keys})::int AS kidx, random() AS r, random() AS r2,
                 50 + floor(random() * 2000)::bigint AS inp, 10 + floor(random() * 500)::bigint AS outp,
                 {start_ms} + floor(random() * {span})::bigint AS t
          FROM generate_series({lo}, {hi}) AS g) x
) s
JOIN bench_keys k ON k.idx = s.kidx
JOIN bench_models m ON m.idx = s.midx;
""")
        total += took
        done = hi
        log(f"usage_records: {done:,} / {args.rows:,} rows ({total:.0f} s)")
    steps["usage_records_s"] = total
    steps["usage_request_ids_s"] = db.script(
        "SET work_mem = '256MB'; SET maintenance_work_mem = '512MB';\n"
        "INSERT INTO usage_request_ids (request_id, created_at_ms) SELECT request_id, created_at_ms"
        " FROM usage_records WHERE request_id LIKE 'req\\_bench\\_%'"
        # In index order: appends to the btree instead of random page writes.
        " ORDER BY request_id;\n"
    )
    log(f"usage_request_ids: {steps['usage_request_ids_s']:.0f} s")
    steps["usage_daily_s"] = db.script(
        "SET work_mem = '256MB'; SET maintenance_work_mem = '512MB';\n"
        "INSERT INTO usage_daily (day, tenant_id, key_id, model, requests, input_tokens, output_tokens,"
        " cached_tokens, images, cost_micro_usd)"
        " SELECT created_at_ms / 86400000, tenant_id, key_id, model, count(*), sum(input_tokens),"
        " sum(output_tokens), sum(cached_tokens), sum(images), sum(cost_micro_usd)"
        " FROM usage_records WHERE request_id LIKE 'req\\_bench\\_%'"
        " GROUP BY tenant_id, 1, key_id, model"
        # Day by day, and within a day in no tenant order: where rows land when the
        # gateway creates them as requests come in (a tenant's rows spread over pages).
        " ORDER BY 1, md5(key_id || model)"
        # The keys phase's own requests are in the rollup already.
        " ON CONFLICT (tenant_id, day, key_id, model) DO UPDATE SET"
        " requests = usage_daily.requests + excluded.requests,"
        " input_tokens = usage_daily.input_tokens + excluded.input_tokens,"
        " output_tokens = usage_daily.output_tokens + excluded.output_tokens,"
        " cost_micro_usd = usage_daily.cost_micro_usd + excluded.cost_micro_usd;\n"
    )
    log(f"usage_daily: {steps['usage_daily_s']:.0f} s")
    # The platform-wide rollup (day, model) the gateway keeps beside usage_daily, and the
    # per-user / per-tag rollups (the bench's records have neither: '' rows).
    sums = ("requests, input_tokens, output_tokens, cached_tokens, cache_write_tokens,"
            " reasoning_tokens, images, cost_micro_usd")
    add = ", ".join(f"{c} = {{t}}.{c} + excluded.{c}" for c in sums.split(", "))
    steps["usage_daily_models_s"] = db.script(
        "SET work_mem = '256MB';\n"
        f"INSERT INTO usage_daily_models (day, model, {sums})"
        " SELECT created_at_ms / 86400000, model, count(*), sum(input_tokens), sum(output_tokens),"
        " sum(cached_tokens), sum(cache_write_tokens), sum(reasoning_tokens), sum(images),"
        " sum(cost_micro_usd) FROM usage_records WHERE request_id LIKE 'req\\_bench\\_%'"
        " GROUP BY 1, model"
        f" ON CONFLICT (day, model) DO UPDATE SET {add.format(t='usage_daily_models')};\n"
    )
    log(f"usage_daily_models: {steps['usage_daily_models_s']:.0f} s")
    steps["usage_daily_users_tags_s"] = db.script(
        "SET work_mem = '256MB';\n"
        "TRUNCATE usage_daily_users, usage_daily_tags;\n"
        f"INSERT INTO usage_daily_users (tenant_id, day, end_user, key_id, model, {sums})"
        f" SELECT tenant_id, day, '', key_id, model, {sums} FROM usage_daily;\n"
        f"INSERT INTO usage_daily_tags (tenant_id, day, tag, end_user, key_id, model, {sums})"
        f" SELECT tenant_id, day, '', '', key_id, model, {sums} FROM usage_daily;\n"
    )
    log(f"usage_daily_users / _tags: {steps['usage_daily_users_tags_s']:.0f} s")
    # What autovacuum would have done by the time anyone queries: statistics and the
    # visibility map (index-only scans).
    steps["vacuum_analyze_s"] = db.script(
        "VACUUM (ANALYZE) usage_daily; VACUUM (ANALYZE) usage_daily_models;"
        " VACUUM (ANALYZE) usage_daily_users; VACUUM (ANALYZE) usage_daily_tags;"
        " ANALYZE usage_records; ANALYZE usage_request_ids;\n"
    )
    log(f"vacuum/analyze: {steps['vacuum_analyze_s']:.0f} s")
    sizes = db.run(
        "SELECT (SELECT count(*) FROM usage_records), (SELECT count(*) FROM usage_daily),"
        " pg_size_pretty(pg_database_size(current_database()))"
    )[0].split("|")
    return {
        "steps": steps, "fill_total_s": sum(steps.values()),
        "usage_records": int(sizes[0]), "usage_daily_rows": int(sizes[1]), "database_size": sizes[2],
        "from_ms": start_ms, "to_ms": end_ms, "months": [add_months(y0, m0, i) for i in range(3)],
    }


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def queries_phase(args: argparse.Namespace, db: Psql, gw: Gateway, fill: dict[str, Any]) -> dict[str, Any]:
    (y0, m0), (y1, m1), (y2, m2) = fill["months"]
    last = f"{y1:04d}-{m1:02d}"  # the last full month
    frm, to = f"{y1:04d}-{m1:02d}-01", f"{y2:04d}-{m2:02d}-01"
    first = f"{y0:04d}-{m0:02d}-01"
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    tenants = db.run("SELECT DISTINCT tenant_id FROM api_keys")[0].split()
    keys = db.run("SELECT id || ' ' || tenant_id FROM api_keys")[0].splitlines()
    rng = random.Random(11)

    def q(path: str, **params: str) -> str:
        return f"{path}?{urllib.parse.urlencode(params)}"

    def tenant() -> str:
        return rng.choice(tenants)

    def key() -> tuple[str, str]:
        k, t = rng.choice(keys).split()
        return k, t

    n = args.queries
    cases: list[tuple[Any, ...]] = [
        ("tenant, current month, by day (defaults)", lambda: q("/admin/v1/usage", tenant=tenant()), n),
        ("tenant, last month, by day", lambda: q("/admin/v1/usage", tenant=tenant(), **{"from": frm, "to": to}, group_by="day"), n),
        ("tenant, last month, by model", lambda: q("/admin/v1/usage", tenant=tenant(), **{"from": frm, "to": to}, group_by="model"), n),
        ("tenant, last month, by key", lambda: q("/admin/v1/usage", tenant=tenant(), **{"from": frm, "to": to}, group_by="key"), n),
        ("tenant, 3 months, by day", lambda: q("/admin/v1/usage", tenant=tenant(), **{"from": first, "to": tomorrow}, group_by="day"), n),
        ("key (no tenant), last month, by day", lambda: q("/admin/v1/usage", key=key()[0], **{"from": frm, "to": to}, group_by="day"), n),
        ("tenant + key, last month, by day", lambda: (lambda k: q("/admin/v1/usage", tenant=k[1], key=k[0], **{"from": frm, "to": to}, group_by="day"))(key()), n),
        ("invoice, tenant, last month (JSON)", lambda: q("/admin/v1/invoices", tenant=tenant(), period=last), n),
        ("invoice, tenant, last month (CSV)", lambda: q("/admin/v1/invoices", tenant=tenant(), period=last, format="csv"), n),
        ("platform, last month, by model", lambda: q("/admin/v1/usage", **{"from": frm, "to": to}, group_by="model"), n),
        ("platform, last month, by day", lambda: q("/admin/v1/usage", **{"from": frm, "to": to}, group_by="day"), n),
        ("platform, last month, by key (export)", lambda: q("/admin/v1/usage", **{"from": frm, "to": to}, group_by="key"), max(5, n // 20)),
    ]
    # The operator console's pages (HTML, whole request through the in-process admin API),
    # signed in once with the admin token like a browser.
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=120)
    conn.request("POST", "/console/login", body=urllib.parse.urlencode({"token": ADMIN_TOKEN}),
                 headers={"Content-Type": "application/x-www-form-urlencoded",
                          "Origin": f"http://127.0.0.1:{gw.admin_port}"})
    resp = conn.getresponse()
    resp.read()
    cookie = (resp.getheader("set-cookie") or "").split(";")[0]
    if resp.status != 303 or not cookie:
        raise SystemExit(f"bench: console sign-in answered {resp.status}")
    names = db.run("SELECT name FROM tenants")[0].split()
    page = {"Cookie": cookie}
    cases += [
        ("console: tenants list", lambda: "/console/tenants", n, page),
        ("console: tenant search", lambda: q("/console/tenants", q=rng.choice(names)[:8]), n, page),
        ("console: tenant page (keys, limits)", lambda: f"/console/tenants/{tenant()}", n, page),
        ("console: spend, current month, by model", lambda: f"/console/tenants/{tenant()}/spend", n, page),
        ("console: spend, last month, by model", lambda: q(f"/console/tenants/{tenant()}/spend", month=last), n, page),
        ("console: spend, last month, by key", lambda: q(f"/console/tenants/{tenant()}/spend", month=last, split="key"), n, page),
        ("console: invoices, last month", lambda: q(f"/console/tenants/{tenant()}/invoices", period=last), n, page),
    ]
    out: dict[str, Any] = {}
    api = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for name, make, count, *extra in cases:
        headers = extra[0] if extra else api
        times: list[float] = []
        rows: list[int] = []
        # Two unmeasured requests first (connection, plan cache).
        for i in range(count + 2):
            path = make()
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            took = (time.perf_counter() - start) * 1e3
            if resp.status != 200:
                raise SystemExit(f"bench: {path}: {resp.status} {body[:300]!r}")
            if i < 2:
                continue
            times.append(took)
            if resp.getheader("content-type", "").startswith("text/html"):
                rows.append(0)
            elif body.startswith(b"{"):
                doc = json.loads(body)
                rows.append(len(doc.get("data", doc.get("lines", []))))
            else:
                rows.append(body.count(b"\n") - 2)
        out[name] = {
            "requests": count, "p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "p99_ms": pct(times, 99),
            "max_ms": max(times), "rows_p50": pct([float(r) for r in rows], 50), "example": make(),
        }
        r = out[name]
        log(f"{name}: p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} p99 {r['p99_ms']:.1f} ms ({r['rows_p50']:.0f} rows)")
    conn.close()
    return out


def report(res: dict[str, Any], args: argparse.Namespace, out_dir: Path) -> str:
    lines = [
        f"Tollgate scale benchmark ({os.cpu_count()} CPUs; Postgres {res['postgres']} + Redis; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
    ]
    if "keys" in res:
        k = res["keys"]
        base = k["a_1_key"]
        lines += [
            f"Keys: fixed rate {args.rate} req/s for {args.seconds} s, 16 connections, latency from dispatch (open loop), chat completion, cache miss path",
            f"{'case':40}{'keys in store':>14}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99/a':>8}{'ovh p50':>9}{'ovh p99':>9}{'non-200':>9}",
        ]
        for name, r in k.items():
            non200 = r["requests"] - r["ok"]
            lines.append(
                f"{name:40}{r['store_keys']:>14,}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}"
                f"{r['p99_ms'] / base['p99_ms']:>8.2f}{r['overhead_p50_ms']:>9.3f}{r['overhead_p99_ms']:>9.3f}{non200:>9}"
            )
        lines.append("  (ovh: the gateway's own x-tollgate-overhead-ms; p50 ratios: "
                     + ", ".join(f"{n[:1]} {r['p50_ms'] / base['p50_ms']:.2f}" for n, r in k.items()) + ")")
        lines.append("")
    if "ledger" in res:
        f = res["ledger"]
        st = f["steps"]
        lines += [
            f"Ledger: {f['usage_records']:,} usage_records over 3 months, {f['usage_daily_rows']:,} usage_daily rows, database {f['database_size']}",
            f"fill: records {st['usage_records_s']:.0f} s, request ids {st['usage_request_ids_s']:.0f} s, rollup {st['usage_daily_s']:.0f} s, vacuum/analyze {st['vacuum_analyze_s']:.0f} s (total {f['fill_total_s']:.0f} s)",
            f"{'admin query (through the API, sequential)':46}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'rows':>8}  target p95<=100",
        ]
        for name, r in res["queries"].items():
            ok = "met" if r["p95_ms"] <= 100 else "MISSED"
            lines.append(f"{name:46}{r['requests']:>5}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['rows_p50']:>8.0f}  {ok}")
    lines.append(f"raw results: {out_dir}/results.json")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tollgate", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--psql", required=True)
    ap.add_argument("--pg-url", required=True, help="a Postgres server's maintenance database URL")
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--tenants", type=int, default=1_000)
    ap.add_argument("--hot-keys", type=int, default=1_000)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--rate", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--queries", type=int, default=200, help="requests per usage query")
    ap.add_argument("--skip-keys", action="store_true", help="only the ledger phase")
    ap.add_argument("--skip-ledger", action="store_true", help="only the keys phase")
    ap.add_argument("--keep-db", action="store_true", help="leave the tg_scale_bench database")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    out_dir = Path(args.out) / f"scale-{time.strftime('%Y%m%dT%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tollgate-scale-"))
    admin_db = Psql(args.psql, args.pg_url)
    dbname = "tg_scale_bench"
    admin_db.run(f"DROP DATABASE IF EXISTS {dbname}")
    admin_db.run(f"CREATE DATABASE {dbname}")
    db_url = args.pg_url.rsplit("/", 1)[0] + f"/{dbname}"
    db = Psql(args.psql, db_url)
    res: dict[str, Any] = {"args": vars(args), "machine": {"cpus": os.cpu_count()},
                           "postgres": admin_db.run("SHOW server_version")[0]}
    mock_port = free_port()
    mock = subprocess.Popen([args.mock, "--listen", f"127.0.0.1:{mock_port}", "--record-limit", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gw = Gateway(args, work, db_url, mock_port)
    try:
        mig = subprocess.run([args.tollgate, "migrate", "--database-url", db_url], capture_output=True, text=True)
        if mig.returncode != 0:
            raise SystemExit(f"bench: tollgate migrate failed: {mig.stderr}")
        if not args.skip_keys:
            res["keys"] = keys_phase(args, db, gw, work)
        else:
            bulk_keys(db, work, args.tenants, args.keys, "default")
        if not args.skip_ledger:
            res["ledger"] = ledger_fill(args, db)
            gw.start()
            res["queries"] = queries_phase(args, db, gw, res["ledger"])
            gw.stop()
        (out_dir / "results.json").write_text(json.dumps(res, indent=2))
        text = report(res, args, out_dir)
        (out_dir / "table.txt").write_text(text + "\n")
        print(text)
    finally:
        gw.stop()
        mock.terminate()
        mock.wait(timeout=30)
        for log_file in work.glob("tollgate-*.log"):
            (out_dir / log_file.name).write_bytes(log_file.read_bytes()[-200_000:])
        subprocess.run(["rm", "-rf", str(work)], check=False)
        if not args.keep_db:
            admin_db.run(f"DROP DATABASE IF EXISTS {dbname}")


if __name__ == "__main__":
    main()
