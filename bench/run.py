"""Tollgate's overhead benchmark: the same load against the mock upstream directly, against
nginx `proxy_pass` (the floor of what any proxy costs) and against tollgate with its layers
on, in one run on one machine; prints a table with ratios to the floor and writes the raw
results. Run it through `bench/run` (which builds the release binaries and installs oha and
nginx when missing).

Tollgate runs on its embedded default store (SQLite) with: auth (a real key), limits (a plan
with rpm/tpm/budget high enough never to refuse, so every request is checked, reserved and
settled), the usage ledger with its spool, /metrics, and the cache on; the measured request
is not deterministic (no `temperature: 0`, no `seed`), so the cache passes it through
(`x-tollgate-cache: bypass`). The cache-hit path is measured separately with a
deterministic request. Two gateways run: `meter.spool_sync: always` (the default) and
`background`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 16}
ADMIN_TOKEN = "bench-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"bench: {url} did not answer within {timeout} s")


def admin(base: str, method: str, path: str, body: Any) -> Any:
    req = urllib.request.Request(
        f"{base}{path}",
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        out = open(log, "wb")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) so far, seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


def children(pid: int) -> list[int]:
    """`pid` and its child processes (nginx's workers)."""
    out = [pid]
    try:
        for line in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out.append(int(line))
    except OSError:
        pass
    return out


def oha(oha_bin: str, url: str, body: dict[str, Any], key: str | None, extra: list[str], headers: dict[str, str]) -> dict[str, Any]:
    args = [oha_bin, "--no-tui", "--output-format", "json", "-m", "POST", "-T", "application/json", "-d", json.dumps(body)]
    if key:
        args += ["-H", f"Authorization: Bearer {key}"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args + extra + [url], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def summarize(raw: dict[str, Any]) -> dict[str, float]:
    pct = raw.get("latencyPercentiles", {})
    summary = raw.get("summary", {})
    codes = raw.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    total = sum(int(v) for v in codes.values())
    return {
        "rps": summary.get("requestsPerSec", float("nan")),
        "p50_ms": pct.get("p50", float("nan")) * 1e3,
        "p90_ms": pct.get("p90", float("nan")) * 1e3,
        "p99_ms": pct.get("p99", float("nan")) * 1e3,
        "ok": ok,
        "non_200": total - ok,
    }


def nginx_conf(dir_: Path, port: int, upstream_port: int) -> Path:
    conf = dir_ / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {dir_}/nginx.pid;
error_log {dir_}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir_}/body;
    proxy_temp_path {dir_}/proxy;
    fastcgi_temp_path {dir_}/fastcgi;
    uwsgi_temp_path {dir_}/uwsgi;
    scgi_temp_path {dir_}/scgi;
    upstream mock {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return conf


def time_to_ready(tollgate: str, workdir: Path) -> float:
    """Milliseconds from spawn to the first answered data-plane request, embedded default."""
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, "TOLLGATE_LOG": "warn"}
    start = time.perf_counter()
    p = subprocess.Popen(
        [tollgate, "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1.1"):
                        return (time.perf_counter() - start) * 1e3
            except OSError:
                if time.perf_counter() - start > 30:
                    raise SystemExit("bench: tollgate did not start")
                time.sleep(0.001)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=40)


def start_gateway(args: argparse.Namespace, procs: Procs, work: Path, mock_port: int, spool_sync: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """A gateway on its own SQLite store and spool, with a tenant on a plan whose limits
    apply to every request without refusing any; returns it, its port and the key."""
    work.mkdir()
    gw_port, gw_admin = free_port(), free_port()
    config = work / "tollgate.yaml"
    config.write_text(
        f"""listen: 127.0.0.1:{gw_port}
admin_listen: 127.0.0.1:{gw_admin}
database_url: sqlite://{work}/tollgate.db
spool_dir: {work}/spool
meter: {{ spool_sync: {spool_sync} }}
admin: {{ bootstrap_token: {ADMIN_TOKEN} }}
cache: {{ enabled: true, ttl_s: 600 }}
models:
  - name: gpt-4o-mini
    deployments:
      - {{ provider: openai, base_url: "http://127.0.0.1:{mock_port}/v1", api_key: sk-bench, model: gpt-4o-mini }}
prices:
  gpt-4o-mini: {{ input: 0.15, output: 0.60, cached_input: 0.075 }}
"""
    )
    gw = procs.start(
        [args.tollgate, "serve", "--config", str(config)],
        work / "tollgate.log",
        env={**os.environ, "TOLLGATE_LOG": "warn"},
    )
    admin_url = f"http://127.0.0.1:{gw_admin}"
    wait_http(f"{admin_url}/healthz")
    admin(admin_url, "PUT", "/admin/v1/plans/bench", {
        "rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrent": 100_000,
        "monthly_budget_usd": "1000000.000000", "monthly_tokens": None,
    })
    tenant = admin(admin_url, "POST", "/admin/v1/tenants", {"name": "bench", "plan": "bench"})
    key = admin(admin_url, "POST", f"/admin/v1/tenants/{tenant['id']}/keys", {"name": "bench"})["key"]
    return gw, gw_port, key


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tollgate", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--rate", type=int, default=300, help="fixed-rate load, requests/s")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()

    out_dir = Path(args.out) / time.strftime("%Y%m%dT%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    procs = Procs()
    raw: dict[str, Any] = {"args": vars(args), "machine": {"cpus": os.cpu_count()}}
    try:
        ready_ms = sorted(time_to_ready(args.tollgate, Path(tempfile.mkdtemp(dir=work))) for _ in range(5))
        raw["ready_ms"] = ready_ms

        mock_port = free_port()
        mock = procs.start([args.mock, "--listen", f"127.0.0.1:{mock_port}", "--record-limit", "0"], work / "mock.log")
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        nginx_port = free_port()
        (work / "nginx").mkdir()
        nginx = procs.start([args.nginx, "-c", str(nginx_conf(work / "nginx", nginx_port, mock_port))], work / "nginx.log")
        wait_http(f"http://127.0.0.1:{nginx_port}/v1/models")

        # The default (`meter.spool_sync: always`: each record fdatasync'ed before its response
        # ends) and `background` (written to the kernel before, synced within 100 ms).
        gw, gw_port, key = start_gateway(args, procs, work / "always", mock_port, "always")
        gw_bg, gw_bg_port, key_bg = start_gateway(args, procs, work / "background", mock_port, "background")

        targets = {
            "direct": (f"http://127.0.0.1:{mock_port}/v1/chat/completions", None, {}),
            "nginx": (f"http://127.0.0.1:{nginx_port}/v1/chat/completions", None, {}),
            "tollgate": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", key, {"Cache-Control": "no-cache"}),
            "tollgate_bg": (f"http://127.0.0.1:{gw_bg_port}/v1/chat/completions", key_bg, {"Cache-Control": "no-cache"}),
        }
        # Whose CPU each target costs (the mock's own is in every one but "direct"'s).
        cpu_pids = {"direct": [mock.pid], "nginx": children(nginx.pid), "tollgate": [gw.pid], "tollgate_bg": [gw_bg.pid]}
        results: dict[str, dict[str, Any]] = {}
        for name, (url, k, headers) in targets.items():
            # Warm up connections, caches and the allocator.
            oha(args.oha, url, CHAT, k, ["-n", "2000", "-c", "8"], headers)
            fixed = oha(args.oha, url, CHAT, k, ["-z", f"{args.seconds}s", "-q", str(args.rate), "-c", "16", "--latency-correction"], headers)
            cpu_before = cpu_seconds(cpu_pids[name])
            peak = oha(args.oha, url, CHAT, k, ["-z", f"{args.seconds}s", "-c", str(args.connections)], headers)
            cpu_used = cpu_seconds(cpu_pids[name]) - cpu_before
            stream = subprocess.run(
                [sys.executable, str(HERE / "stream_ttfb.py"), "--url", url, "--key", k or "none",
                 "--connections", "8", "--seconds", str(max(5, args.seconds // 2))],
                capture_output=True, text=True, check=True,
            )
            results[name] = {
                "fixed": summarize(fixed),
                "max": summarize(peak),
                "stream": json.loads(stream.stdout),
            }
            answered = results[name]["max"]["ok"] + results[name]["max"]["non_200"]
            results[name]["max"]["cpu_us_per_request"] = cpu_used * 1e6 / max(answered, 1)
            raw[name] = {"fixed": fixed, "max": peak, "stream": json.loads(stream.stdout)}
        results["tollgate"]["rss_peak_mib"] = rss_peak_kib(gw.pid) / 1024
        results["tollgate_bg"]["rss_peak_mib"] = rss_peak_kib(gw_bg.pid) / 1024

        hit_body = {**CHAT, "temperature": 0}
        hit_url, _, _ = targets["tollgate"]
        oha(args.oha, hit_url, hit_body, key, ["-n", "200", "-c", "1"], {})
        hit = oha(args.oha, hit_url, hit_body, key, ["-z", f"{args.seconds}s", "-q", str(args.rate), "-c", "16", "--latency-correction"], {})
        results["cache_hit"] = {"fixed": summarize(hit)}
        raw["cache_hit"] = hit
        results["tollgate"]["rss_peak_mib"] = rss_peak_kib(gw.pid) / 1024
        raw["summary"] = results
        (out_dir / "results.json").write_text(json.dumps(raw, indent=2))
        report(results, ready_ms, args, out_dir)
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any], ready_ms: list[float], args: argparse.Namespace, out_dir: Path) -> None:
    d, n, t, g, h = r["direct"], r["nginx"], r["tollgate"], r["tollgate_bg"], r["cache_hit"]
    lines = [
        f"Tollgate overhead benchmark ({os.cpu_count()} CPUs; fixed rate {args.rate} req/s, latency-corrected; max: {args.connections} connections; {args.seconds} s each)",
        "tollgate: default spool_sync: always (fdatasync per record); tg-bg: spool_sync: background",
        "",
        f"{'':28}{'direct':>10}{'nginx':>10}{'tollgate':>10}{'tg - nginx':>12}{'tg / nginx':>12}{'tg-bg':>10}{'bg - nginx':>12}{'bg / nginx':>12}",
    ]

    def row(label: str, key: str, sub: str) -> None:
        a, b, c, e = d[key][sub], n[key][sub], t[key][sub], g[key][sub]
        ratio = lambda x: x / b if b else float("nan")  # noqa: E731
        lines.append(
            f"{label:28}{a:>10.3f}{b:>10.3f}{c:>10.3f}{c - b:>12.3f}{ratio(c):>12.2f}{e:>10.3f}{e - b:>12.3f}{ratio(e):>12.2f}"
        )

    row("fixed p50 (ms)", "fixed", "p50_ms")
    row("fixed p90 (ms)", "fixed", "p90_ms")
    row("fixed p99 (ms)", "fixed", "p99_ms")
    row("max throughput (req/s)", "max", "rps")
    row("CPU µs/request at max", "max", "cpu_us_per_request")
    row("max p50 (ms)", "max", "p50_ms")
    row("stream TTFB p50 (ms)", "stream", "ttfb_p50_ms")
    row("stream TTFB p99 (ms)", "stream", "ttfb_p99_ms")
    row("streams/s (8 conns)", "stream", "streams_per_s")
    lines += [
        "",
        "CPU µs/request: process user+system time during the max-throughput run / requests answered (nginx: master and worker; direct: the mock itself)",
        f"cache hit, fixed rate: p50 {h['fixed']['p50_ms']:.3f} ms, p99 {h['fixed']['p99_ms']:.3f} ms (direct upstream p50 {d['fixed']['p50_ms']:.3f} ms)",
        f"tollgate peak RSS under this load: {t['rss_peak_mib']:.1f} MiB (tg-bg {g['rss_peak_mib']:.1f} MiB)",
        f"ready to serve after spawn (embedded default), 5 starts: median {ready_ms[len(ready_ms) // 2]:.1f} ms, max {ready_ms[-1]:.1f} ms",
        f"non-200 answers: " + ", ".join(f"{k} {r[k]['fixed']['non_200'] + r[k]['max']['non_200']}" for k in ("direct", "nginx", "tollgate", "tollgate_bg")),
        f"raw results: {out_dir}/results.json",
    ]
    text = "\n".join(lines)
    (out_dir / "table.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
