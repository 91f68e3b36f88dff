"""Streaming load for bench/run: N client threads, each on its own keep-alive connection,
send streamed chat completions back to back for a fixed time and record, per stream, the
time to the response headers, to the first body chunk, and to the end. Prints one JSON
object with streams/s and percentiles (milliseconds). Standard library only, so the same
client measures every target and its own cost cancels out in the comparison."""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def worker(url: str, key: str, body: bytes, deadline: float, out: list[tuple[float, float, float]], errors: list[str]) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            conn.request("POST", parts.path, body=body, headers=headers)
            resp = conn.getresponse()
            t_headers = time.perf_counter()
            first = resp.read1(65536)
            t_first = time.perf_counter()
            while resp.read1(65536):
                pass
            t_end = time.perf_counter()
            if resp.status != 200 or not first:
                errors.append(f"status {resp.status}")
                continue
            out.append((t_headers - start, t_first - start, t_end - start))
        except (OSError, http.client.HTTPException) as e:
            errors.append(type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="full URL of /v1/chat/completions")
    ap.add_argument("--key", default="none")
    ap.add_argument("--model", default="gpt-4o-mini")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    body = json.dumps(
        {"model": args.model, "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
    ).encode()
    deadline = time.perf_counter() + args.seconds
    samples: list[tuple[float, float, float]] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=worker, args=(args.url, args.key, body, deadline, samples, errors))
        for _ in range(args.connections)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = lambda i, p: percentile([s[i] * 1e3 for s in samples], p)  # noqa: E731
    print(
        json.dumps(
            {
                "streams": len(samples),
                "errors": len(errors),
                "streams_per_s": len(samples) / elapsed,
                "ttfb_p50_ms": ms(1, 50),
                "ttfb_p99_ms": ms(1, 99),
                "headers_p50_ms": ms(0, 50),
                "total_p50_ms": ms(2, 50),
                "total_mean_ms": statistics.fmean([s[2] * 1e3 for s in samples]) if samples else None,
            }
        )
    )


if __name__ == "__main__":
    main()
