#!/usr/bin/env python3
"""Ferrogate's response cache vs nginx proxy_cache on the same content, and
the cost of JSON trimming on a 20 KB body.

Placement as in bench/proxy.py: wrk on CPU0; the proxy under test and the
upstream (nginx, one worker, serving a file with Cache-Control: max-age) on
CPU1. One worker each: nginx `worker_processes 1`, Ferrogate `--threads 1
--access-log off` (nginx runs with `access_log off` too). Runs are
interleaved and repeated; medians with min-max are printed.

1. Cache hits: every request is a hit after the warm-up (checked: the
   upstream sees no request during the measured runs). nginx keeps cached
   bodies in files (in the page cache; on tmpfs here when /dev/shm exists),
   Ferrogate in memory.
2. Trimming: the same 20 KB JSON proxied (no cache) to a phone, with a
   `responseTransform` removing four array paths, vs to a desktop (no
   transform): the difference in proxy CPU per request is the cost of
   trimming. The in-process cost per body comes from
   `cargo run --release -p dataplane --example transform_bench`.

    python3 bench/cache.py [--runs 5] [--duration 10] [--body 20480]
                           [--binary target/release/ferrogate]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import (  # noqa: E402
    ROOT, cpu_ticks, free_port, nginx_worker_pid, parse_wrk, require, start, wait_port)

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
DESKTOP = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/124.0.0.0 Safari/537.36")


def catalogue(target):
    items, i = [], 0
    while True:
        items.append({
            "id": i, "sku": f"SKU-{i:06}", "name": f"Product number {i}",
            "price": {"amount": 1999 + i, "currency": "EUR"},
            "description": "A sturdy, well made product that does what it says on the tin.",
            "images": [f"https://cdn.example/{i}/1.jpg", f"https://cdn.example/{i}/2.jpg"],
            "reviews": {"count": i * 3, "average": 4.5},
            "internal": {"warehouse": "B7", "margin": 0.31},
        })
        i += 1
        text = json.dumps({"items": items, "page": {"n": 1, "size": i}}, separators=(",", ":"))
        if len(text) >= target:
            return text


def wrk(url, host, duration, headers=(), pid=None, connections=50):
    before = cpu_ticks(pid) if pid else 0
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           "-H", f"Host: {host}"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    result = parse_wrk(out)
    if pid:
        ticks = cpu_ticks(pid) - before
        result["cpu_us_per_req"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(result["requests"], 1)
    return result


def upstream_hits(log):
    try:
        with open(log) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def fmt(runs, key):
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--body", type=int, default=20 * 1024, help="JSON body size in bytes")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    args = ap.parse_args()
    require(args.binary)

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    # `user root` below: nginx's workers must write their cache here.
    tmp = tempfile.mkdtemp(prefix="fg-cache-bench-", dir=base)
    os.makedirs(f"{tmp}/www")
    body = catalogue(args.body)
    with open(f"{tmp}/www/catalog.json", "w") as f:
        f.write(body)
    up_port, px_port = free_port(), free_port()
    with open(f"{tmp}/up.conf", "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
user root;
pid {tmp}/up.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log {tmp}/upstream.log;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{up_port} backlog=4096;
    root {tmp}/www;
    default_type application/json;
    location / {{ add_header Cache-Control "max-age=3600"; try_files /catalog.json =404; }}
  }}
}}
""")
    with open(f"{tmp}/px.conf", "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
user root;
pid {tmp}/px.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=fg:10m max_size=128m inactive=60m use_temp_path=off;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{px_port} backlog=4096;
    location / {{
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_cache fg; proxy_cache_lock on; proxy_cache_key $host$request_uri;
      add_header Cache-Status $upstream_cache_status;
    }}
  }}
}}
""")
    manifests = f"{tmp}/manifests"
    os.makedirs(manifests)
    with open(f"{manifests}/routes.yaml", "w") as f:
        f.write(f"""apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: bench, namespace: default}}
spec:
  hosts: [bench.local]
  rules:
  - name: cached
    matches: [{{path: {{type: PathPrefix, value: /cached}}}}]
    backends: [{{url: "http://127.0.0.1:{up_port}"}}]
    filters: {{cache: {{maxEntryBytes: 1048576}}}}
  - name: trimmed
    matches: [{{path: {{type: PathPrefix, value: /trimmed}}}}]
    backends: [{{url: "http://127.0.0.1:{up_port}"}}]
    filters:
      responseTransform:
        devices: [mobile]
        remove: ["items[].description", "items[].images", "items[].reviews", "items[].internal"]
""")
    procs = []
    try:
        procs.append(start(["nginx", "-c", f"{tmp}/up.conf", "-p", tmp]))
        procs.append(start(["nginx", "-c", f"{tmp}/px.conf", "-p", tmp]))
        wait_port(up_port)
        wait_port(px_port)
        fg = start([args.binary, "serve", "--manifests", manifests, "--threads", "1",
                    "--access-log", "off", "--http", "127.0.0.1:0", "--https", "none",
                    "--admin", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                   text=True)
        procs.append(fg)
        event = json.loads(fg.stdout.readline())
        fg_port = int(event["http"].rsplit(":", 1)[1])
        wait_port(fg_port)
        nginx_worker = nginx_worker_pid(procs[1])

        def head(url, headers):
            req = urllib.request.Request(url, headers=dict(headers))
            with urllib.request.urlopen(req) as r:
                return r.headers, r.read()

        # Warm both caches, check what they say.
        for _ in range(2):
            h_n, b_n = head(f"http://127.0.0.1:{px_port}/cached", {"Host": "bench.local"})
            h_f, b_f = head(f"http://127.0.0.1:{fg_port}/cached", {"Host": "bench.local"})
        assert b_n == b_f == body.encode(), "both serve the upstream's body"
        print(f"# warm: nginx Cache-Status {h_n['Cache-Status']}, ferrogate Cache-Status "
              f"{h_f['Cache-Status']}", file=sys.stderr)

        targets = [("nginx proxy_cache", f"http://127.0.0.1:{px_port}/cached", nginx_worker),
                   ("ferrogate cache", f"http://127.0.0.1:{fg_port}/cached", fg.pid)]
        for _, url, pid in targets:
            wrk(url, "bench.local", args.warmup, pid=pid)
        hits_before = upstream_hits(f"{tmp}/upstream.log")
        results = {name: [] for name, _, _ in targets}
        for _ in range(args.runs):
            for name, url, pid in targets:
                r = wrk(url, "bench.local", args.duration, pid=pid)
                if r["non2xx"] or r["socket_errors"]:
                    print(f"  discarded {name}: {r['non2xx']} non-2xx {r['socket_errors']}",
                          file=sys.stderr)
                    continue
                results[name].append(r)
        upstream_during = upstream_hits(f"{tmp}/upstream.log") - hits_before
        print(f"# cache hits: {len(body)} B JSON body, {args.runs} x {args.duration}s, "
              f"wrk -t1 -c50 (CPU0), proxy and upstream on CPU1; "
              f"upstream requests during the runs: {upstream_during}")
        print(f"{'target':<18} {'req/s':>24} {'p50 ms':>16} {'p99 ms':>16} {'CPU us/req':>16}")
        for name, _, _ in targets:
            runs = results[name]
            if runs:
                print(f"{name:<18} {fmt(runs, 'rps'):>24} {fmt(runs, 'p50_ms'):>16} "
                      f"{fmt(runs, 'p99_ms'):>16} {fmt(runs, 'cpu_us_per_req'):>16}")
        a, b = results["ferrogate cache"], results["nginx proxy_cache"]
        if a and b:
            print(f"ratio req/s ferrogate/nginx = {med(a, 'rps') / med(b, 'rps'):.2f}")
            print(f"ratio CPU/req ferrogate/nginx = {med(a, 'cpu_us_per_req') / med(b, 'cpu_us_per_req'):.2f}")

        # Trimming: phone (transform) vs desktop (none), same route, no cache.
        _, trimmed = head(f"http://127.0.0.1:{fg_port}/trimmed",
                          {"Host": "bench.local", "User-Agent": IPHONE})
        print(f"# trimming: {len(body)} B -> {len(trimmed)} B for phones")
        trim = {"desktop (no transform)": [], "phone (transform)": []}
        uas = {"desktop (no transform)": DESKTOP, "phone (transform)": IPHONE}
        for name, ua in uas.items():
            wrk(f"http://127.0.0.1:{fg_port}/trimmed", "bench.local", args.warmup,
                headers=[f"User-Agent: {ua}"], pid=fg.pid)
        for _ in range(args.runs):
            for name, ua in uas.items():
                r = wrk(f"http://127.0.0.1:{fg_port}/trimmed", "bench.local", args.duration,
                        headers=[f"User-Agent: {ua}"], pid=fg.pid)
                if not (r["non2xx"] or r["socket_errors"]):
                    trim[name].append(r)
        print(f"{'ferrogate, proxied':<24} {'req/s':>24} {'p99 ms':>16} {'CPU us/req':>16}")
        for name, runs in trim.items():
            if runs:
                print(f"{name:<24} {fmt(runs, 'rps'):>24} {fmt(runs, 'p99_ms'):>16} "
                      f"{fmt(runs, 'cpu_us_per_req'):>16}")
        d, p = trim["desktop (no transform)"], trim["phone (transform)"]
        if d and p:
            print(f"trimming cost: {med(p, 'cpu_us_per_req') - med(d, 'cpu_us_per_req'):.1f} us CPU "
                  f"per request (proxy CPU, end to end)")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGQUIT if p is not procs[-1] or len(procs) < 3 else signal.SIGKILL)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    micro = subprocess.run(["cargo", "run", "--release", "-q", "-p", "dataplane", "--example",
                            "transform_bench"], cwd=ROOT, capture_output=True, text=True)
    print(micro.stdout.strip() or micro.stderr.strip())


if __name__ == "__main__":
    main()
