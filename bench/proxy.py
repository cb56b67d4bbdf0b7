#!/usr/bin/env python3
"""Ferrogate vs nginx (and direct) as an HTTP reverse proxy, side by side.

Placement (see the benchmarking recipe): wrk on CPU0; the proxy under test
and the upstream (nginx, one worker, `return 200`) on CPU1. Every proxy
gets one worker: nginx `worker_processes 1`, Ferrogate `--threads 1`.
Runs are interleaved (direct, nginx, ferrogate, ...) and repeated; the
median and min-max are printed, with ratios taken within the same run.

    python3 bench/proxy.py [--runs 5] [--duration 10] [--routes 10]
                           [--body 0] [--binary target/release/ferrogate]

Also measures, unless --quick: HTTPS handshake rate (new TLS connection
per request, h2load) vs nginx, throughput at 10 vs 10,000 routes, and RSS
with 10,000 routes.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def cpu_ticks(pid):
    """utime + stime of a process and all its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": rps,
        "requests": total,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
        "p50_ms": lat(50),
        "p99_ms": lat(99),
    }


def run_wrk(url, host, duration, connections=50, proxy_pid=None):
    before = cpu_ticks(proxy_pid) if proxy_pid else 0
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "--latency", "-H", f"Host: {host}", url],
        capture_output=True, text=True, check=True).stdout
    result = parse_wrk(out)
    if proxy_pid:
        ticks = cpu_ticks(proxy_pid) - before
        hz = os.sysconf("SC_CLK_TCK")
        result["cpu_us_per_req"] = ticks / hz * 1e6 / max(result["requests"], 1)
    return result


def start(cmd, cpu="1", **kw):
    return subprocess.Popen(["taskset", "-c", cpu] + cmd, **kw)


def nginx_conf(path, listen, body, upstream_port=None):
    if upstream_port is None:
        server = f"location / {{ return 200 '{body}'; }}"
        upstream = ""
    else:
        upstream = f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        server = ("location / { proxy_pass http://up; proxy_http_version 1.1; "
                  "proxy_set_header Connection \"\"; proxy_set_header Host $host; }")
    with open(path, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {path}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {upstream}
  server {{ listen 127.0.0.1:{listen} backlog=4096; {server} }}
}}
""")


def routes_yaml(n, upstream_port):
    docs = []
    for i in range(n):
        host = "bench.local" if i == 0 else f"r{i}.bench.local"
        docs.append(f"""apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata:
  name: r{i}
  namespace: default
spec:
  hosts: ["{host}"]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /}}
    backends:
    - url: http://127.0.0.1:{upstream_port}
""")
    return "---\n".join(docs)


class Ferrogate:
    def __init__(self, binary, routes, upstream_port, tls=False, cert=None):
        self.dir = tempfile.mkdtemp(prefix="fg-bench-")
        with open(os.path.join(self.dir, "routes.yaml"), "w") as f:
            f.write(routes_yaml(routes, upstream_port))
        if cert:
            with open(os.path.join(self.dir, "tls.yaml"), "w") as f:
                f.write(cert)
        self.proc = start([binary, "serve", "--manifests", self.dir, "--threads", "1",
                           "--http", "127.0.0.1:0", "--https", "127.0.0.1:0",
                           "--admin", "127.0.0.1:0",
                           # nginx runs with access_log off too.
                           "--access-log", "off"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        event = json.loads(line)
        self.http = int(event["http"].rsplit(":", 1)[1])
        self.https = int(event["https"].rsplit(":", 1)[1])
        self.pid = self.proc.pid

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def summarize(name, runs, key):
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--routes", type=int, default=10)
    ap.add_argument("--body", type=int, default=0, help="response body size in bytes")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    ap.add_argument("--quick", action="store_true", help="only the req/s comparison")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/test-deps.sh")
    if not os.path.exists(args.binary):
        raise SystemExit(f"{args.binary} is missing: run cargo build --release")

    tmp = tempfile.mkdtemp(prefix="fg-bench-nginx-")
    body = "x" * args.body
    up_port, px_port = free_port(), free_port()
    nginx_conf(f"{tmp}/up.conf", up_port, body)
    nginx_conf(f"{tmp}/px.conf", px_port, body, upstream_port=up_port)
    upstream = start(["nginx", "-c", f"{tmp}/up.conf", "-p", tmp])
    nginx_px = start(["nginx", "-c", f"{tmp}/px.conf", "-p", tmp])
    wait_port(up_port)
    wait_port(px_port)
    fg = Ferrogate(args.binary, args.routes, up_port)
    wait_port(fg.http)
    nginx_worker = int(subprocess.run(["pgrep", "-P", str(nginx_px.pid)],
                                      capture_output=True, text=True).stdout.split()[0])
    targets = [
        ("direct", f"http://127.0.0.1:{up_port}/", None),
        ("nginx", f"http://127.0.0.1:{px_port}/", nginx_worker),
        ("ferrogate", f"http://127.0.0.1:{fg.http}/", fg.pid),
    ]
    results = {name: [] for name, _, _ in targets}
    try:
        for name, url, pid in targets:
            run_wrk(url, "bench.local", args.warmup, proxy_pid=pid)
        for i in range(args.runs):
            for name, url, pid in targets:
                r = run_wrk(url, "bench.local", args.duration, proxy_pid=pid)
                if r["non2xx"] or r["socket_errors"]:
                    print(f"  discarded {name} run {i}: {r['non2xx']} non-2xx {r['socket_errors']}",
                          file=sys.stderr)
                    continue
                results[name].append(r)
        print(f"# proxy benchmark: body {args.body} B, {args.routes} routes, "
              f"{args.runs} x {args.duration}s, wrk -t1 -c50 (CPU0), proxies on CPU1")
        print(f"{'target':<10} {'req/s':>22} {'p50 ms':>18} {'p99 ms':>18} {'CPU us/req':>20}")
        for name, _, pid in targets:
            runs = results[name]
            if not runs:
                print(f"{name:<10} no valid runs")
                continue
            cpu = summarize(name, runs, "cpu_us_per_req") if pid else "-"
            print(f"{name:<10} {summarize(name, runs, 'rps'):>22} {summarize(name, runs, 'p50_ms'):>18} "
                  f"{summarize(name, runs, 'p99_ms'):>18} {cpu:>20}")
        if results["nginx"] and results["ferrogate"] and results["direct"]:
            med = lambda n, k: statistics.median(r[k] for r in results[n])
            print(f"ratio req/s ferrogate/nginx  = {med('ferrogate', 'rps') / med('nginx', 'rps'):.2f}")
            print(f"ratio req/s ferrogate/direct = {med('ferrogate', 'rps') / med('direct', 'rps'):.2f}")
            print(f"ratio p99   ferrogate/nginx  = {med('ferrogate', 'p99_ms') / med('nginx', 'p99_ms'):.2f}")
            print(f"ratio CPU/req ferrogate/nginx = "
                  f"{med('ferrogate', 'cpu_us_per_req') / med('nginx', 'cpu_us_per_req'):.2f}")
        if not args.quick:
            extra(args, up_port, tmp, fg)
    finally:
        fg.stop()
        for p in (upstream, nginx_px):
            p.send_signal(signal.SIGQUIT)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def extra(args, up_port, tmp, fg10):
    # Throughput with 10,000 routes vs the 10-route instance, interleaved.
    big = Ferrogate(args.binary, 10_000, up_port)
    try:
        wait_port(big.http)
        small_runs, big_runs = [], []
        for _ in range(max(3, args.runs)):
            small_runs.append(run_wrk(f"http://127.0.0.1:{fg10.http}/", "bench.local",
                                      args.duration, proxy_pid=fg10.pid)["rps"])
            big_runs.append(run_wrk(f"http://127.0.0.1:{big.http}/", "r9999.bench.local",
                                    args.duration, proxy_pid=big.pid)["rps"])
        print(f"routes: {args.routes} -> {statistics.median(small_runs):.0f} req/s; "
              f"10000 -> {statistics.median(big_runs):.0f} req/s; ratio "
              f"{statistics.median(big_runs) / statistics.median(small_runs):.2f}")
        print(f"RSS with 10000 routes: {rss_kib(big.pid) / 1024:.1f} MiB "
              f"(10 routes: {rss_kib(fg10.pid) / 1024:.1f} MiB)")
    finally:
        big.stop()
    handshakes(args, up_port, tmp)


def handshakes(args, up_port, tmp):
    """New TLS connection per request: h2load with 2,000 clients making one
    request each, against nginx and Ferrogate with the same ECDSA P-256
    certificate (no session resumption on either side)."""
    if not shutil.which("h2load") or not shutil.which("openssl"):
        print("handshakes: h2load or openssl missing; skipped measurement", file=sys.stderr)
        return
    key, crt = f"{tmp}/tls.key", f"{tmp}/tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=bench.local",
                    "-addext", "subjectAltName=DNS:bench.local"], check=True, capture_output=True)
    port = free_port()
    with open(f"{tmp}/tls.conf", "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/tls.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    nginx = start(["nginx", "-c", f"{tmp}/tls.conf", "-p", tmp])
    secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: bench-tls, namespace: default}\n"
              "type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n"
              + "".join("    " + l + "\n" for l in open(crt).read().splitlines())
              + "  tls.key: |\n" + "".join("    " + l + "\n" for l in open(key).read().splitlines())
              + "---\napiVersion: ferrogate.dev/v1alpha1\nkind: TlsCertificate\n"
                "metadata: {name: bench, namespace: default}\n"
                "spec: {hosts: [bench.local], secretName: bench-tls}\n")
    fg = Ferrogate(args.binary, 1, up_port, cert=secret)
    try:
        wait_port(port)
        wait_port(fg.https)
        rates = {"nginx": [], "ferrogate": []}
        for _ in range(3):
            for name, p in (("nginx", port), ("ferrogate", fg.https)):
                out = subprocess.run(
                    ["taskset", "-c", "0", "h2load", "-n", "2000", "-c", "2000", "-m", "1",
                     "--h1", "--sni", "bench.local", f"https://127.0.0.1:{p}/"],
                    capture_output=True, text=True).stdout
                m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
                ok = re.search(r"(\d+) succeeded", out)
                if m and ok and int(ok.group(1)) > 0:
                    rates[name].append(float(m.group(1)))
        if rates["nginx"] and rates["ferrogate"]:
            n, f_ = statistics.median(rates["nginx"]), statistics.median(rates["ferrogate"])
            print(f"TLS handshakes (new connection per request): nginx {n:.0f}/s, "
                  f"ferrogate {f_:.0f}/s, ratio {f_ / n:.2f}")
        else:
            print(f"TLS handshakes: no valid runs {rates}", file=sys.stderr)
    finally:
        fg.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()


if __name__ == "__main__":
    main()
