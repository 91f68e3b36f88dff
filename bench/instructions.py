"""User-space instructions per request of the gateway, counted by callgrind: a figure a
busy machine cannot move (the same binary, config and requests count the same).

Run it through `bench/instructions` (which builds the release binaries). It starts the
mock upstream, then tollgate under `valgrind --tool=callgrind` with instrumentation off, with
the same features on as `bench/run` (auth with a real key, limits on a plan that never
refuses, the ledger with `spool_sync: always`, metrics, the cache on and bypassed),
warms it up, turns instrumentation on for N sequential keep-alive requests, and divides the
instructions counted by N. Every thread of the process is counted: the spool writer and
the SQLite flusher's share of each request included. The annotated profile (functions
by instructions, inclusive) is written next to the raw results.

  bench/instructions [--requests 2000] [--stream] [--tollgate BIN --mock BIN]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import ADMIN_TOKEN, CHAT, admin, free_port, wait_http  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tollgate", required=True)
    ap.add_argument("--mock", required=True)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--stream", action="store_true", help="streamed chat requests instead of plain ones")
    ap.add_argument("--spool-sync", default="always", choices=["always", "background"])
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("bench/instructions needs valgrind (apt-get install valgrind)")

    out_dir = Path(args.out) / ("instructions-" + time.strftime("%Y%m%dT%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tollgate-callgrind-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock_port = free_port()
        procs.append(subprocess.Popen(
            [args.mock, "--listen", f"127.0.0.1:{mock_port}", "--record-limit", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        port, admin_port = free_port(), free_port()
        config = work / "tollgate.yaml"
        config.write_text(
            f"""listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
database_url: sqlite://{work}/tollgate.db
spool_dir: {work}/spool
meter: {{ spool_sync: {args.spool_sync} }}
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
        callgrind_out = out_dir / "callgrind.out"
        gw = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={callgrind_out}",
             args.tollgate, "serve", "--config", str(config)],
            stdout=open(work / "tollgate.log", "wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "TOLLGATE_LOG": "warn"},
        )
        procs.append(gw)
        admin_url = f"http://127.0.0.1:{admin_port}"
        wait_http(f"{admin_url}/healthz", timeout=300)
        admin(admin_url, "PUT", "/admin/v1/plans/bench", {
            "rpm": 10_000_000, "tpm": 2_000_000_000, "max_concurrent": 100_000,
            "monthly_budget_usd": "1000000.000000", "monthly_tokens": None,
        })
        tenant = admin(admin_url, "POST", "/admin/v1/tenants", {"name": "bench", "plan": "bench"})
        key = admin(admin_url, "POST", f"/admin/v1/tenants/{tenant['id']}/keys", {"name": "bench"})["key"]

        body = dict(CHAT)
        if args.stream:
            body["stream"] = True
        payload = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Cache-Control": "no-cache"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def send(n: int) -> None:
            for _ in range(n):
                conn.request("POST", "/v1/chat/completions", body=payload, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"bench: answer {r.status}")

        send(args.warmup)
        time.sleep(1)  # let the flusher catch up, so the window holds its share only
        subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
        send(args.requests)
        time.sleep(1.5)  # the flusher's share of those requests (flush_interval 200 ms)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=300)
        # The dump holds the window (the file at exit holds only what came after it).
        outs = [f for f in sorted(out_dir.glob("callgrind.out.*"))]
        total = 0
        for f in outs:
            for line in f.read_text(errors="replace").splitlines():
                if line.startswith("totals:") or line.startswith("summary:"):
                    total += int(line.split()[1])
                    break
        per = total / args.requests
        kind = "streamed" if args.stream else "plain"
        print(f"instructions per {kind} request: {per:,.0f} (callgrind Ir, all threads, {args.requests} requests, spool_sync: {args.spool_sync})")
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", *map(str, outs)],
                                   capture_output=True, text=True)
        (out_dir / "annotate.txt").write_text(annotated.stdout)
        (out_dir / "summary.json").write_text(json.dumps({"instructions_per_request": per, "requests": args.requests,
                                                          "stream": args.stream, "spool_sync": args.spool_sync}))
        print(f"profile: {out_dir}/annotate.txt")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
