#!/usr/bin/env python3
"""Ferrogate vs nginx (and direct) as an HTTP reverse proxy, side by side.

Placement (see the benchmarking recipe): the load generator (wrk, h2load)
on CPU0; the proxy under test and the upstream (nginx, one worker,
`return 200`) on CPU1. Every proxy gets one worker: nginx
`worker_processes 1`, Ferrogate `--threads 1`; upstream keep-alive on and
access logs off for both. Runs are interleaved (direct, nginx, ferrogate,
direct, ...) and repeated; the median and min-max are printed, and ratios
are taken between medians of the same invocation.

    python3 bench/proxy.py [--runs 5] [--duration 10] [--routes 10]
                           [--body 0] [--binary target/release/ferrogate]
                           [--quick] [--json FILE]

`--binary target/pgo/ferrogate` measures the profile-guided build that
the container image ships (scripts/build-pgo.sh); the default is the
plain `cargo build --release` one. RESULTS.md records both.

`nginx-gw` is the same nginx also doing what Ferrogate does to every
forwarded request by default: X-Forwarded-For/-Proto/-Host and an
X-Request-ID (the client's, or a new random one) sent upstream and
returned. It is printed for comparison; the target is against plain nginx.

Unless --quick, it also measures:
- throughput with 10 vs 10,000 routes (the request goes to the last
  route's host), interleaved, and the RSS of the 10,000-route process;
- HTTPS handshakes: every request on a new TLS connection (h2load with as
  many clients as requests, so each client makes one request; SNI and Host
  are bench.local), the same ECDSA P-256 certificate on both peers, no
  session resumption (h2load never offers a session). Reported as
  handshakes/s and as the proxy's CPU time per handshake.

CPU us/req is the proxy process's utime+stime (all threads) over the run,
divided by the requests wrk counted: the most stable figure on a busy
machine. The load average is printed so that disturbed runs can be spotted.
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
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require(binary, tools=("nginx", "wrk", "taskset")):
    """Stops with what to run when a tool or the release build is missing."""
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/test-deps.sh")
    if not os.path.exists(binary):
        raise SystemExit(f"{binary} is missing: run cargo build --release")


def nginx_worker_pid(master):
    """The pid of the one worker of the nginx whose master is `master`."""
    out = subprocess.run(["pgrep", "-P", str(master.pid)],
                         capture_output=True, text=True).stdout.split()
    if not out:
        raise SystemExit(f"nginx (pid {master.pid}) has no worker process")
    return int(out[0])


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
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid, field="VmRSS"):
    """Resident memory now (VmRSS) or at its peak (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


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


def nginx_return(body):
    """A `return 200` of `body`. nginx refuses a single parameter longer
    than 4 KiB, so a larger body is the concatenation of variables set from
    4 KiB pieces."""
    if len(body) <= 4000:
        return f"return 200 '{body}';"
    pieces = [body[i:i + 4000] for i in range(0, len(body), 4000)]
    sets = " ".join(f"set $p{i} '{p}';" for i, p in enumerate(pieces))
    return sets + " return 200 '" + "".join(f"$p{i}" for i in range(len(pieces))) + "';"


# What Ferrogate adds to every forwarded request by default, in nginx's
# terms: X-Forwarded-For/-Proto/-Host (client values not trusted), the
# client's X-Request-ID or a new random one, sent upstream and returned to
# the client. (Not included: the W3C traceparent, which stock nginx cannot
# make, and per-route metrics.)
GATEWAY_HEADERS = (
    "proxy_set_header X-Forwarded-For $remote_addr; "
    "proxy_set_header X-Forwarded-Proto $scheme; "
    "proxy_set_header X-Forwarded-Host $host; "
    "proxy_set_header X-Request-ID $fg_request_id; "
    "add_header X-Request-ID $fg_request_id always;"
)
GATEWAY_MAP = ("map $http_x_request_id $fg_request_id { default $http_x_request_id; "
               "\"\" $request_id; }")


def nginx_conf(path, listen, body, upstream_port=None, gateway_headers=False):
    if upstream_port is None:
        server = f"location / {{ {nginx_return(body)} }}"
        upstream = ""
    else:
        upstream = f"upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}"
        extra_headers = GATEWAY_HEADERS if gateway_headers else ""
        server = ("location / { proxy_pass http://up; proxy_http_version 1.1; "
                  "proxy_set_header Connection \"\"; proxy_set_header Host $host; "
                  f"{extra_headers} }}")
        if gateway_headers:
            upstream += " " + GATEWAY_MAP
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
    def __init__(self, binary, routes, upstream_port, cert=None):
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
        if not line:
            raise SystemExit(f"{binary} serve exited before listening")
        event = json.loads(line)
        self.http = int(event["http"].rsplit(":", 1)[1])
        self.https = int(event["https"].rsplit(":", 1)[1])
        self.pid = self.proc.pid
        # Keep reading stdout so that the process never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def summarize(runs, key):
    values = [r[key] for r in runs]
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--routes", type=int, default=10)
    ap.add_argument("--body", type=int, default=0, help="response body size in bytes")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    ap.add_argument("--quick", action="store_true", help="only the req/s comparison")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    require(args.binary)

    report = {"args": vars(args), "load_before": loadavg()}
    tmp = tempfile.mkdtemp(prefix="fg-bench-nginx-")
    body = "x" * args.body
    up_port, px_port, gw_port = free_port(), free_port(), free_port()
    nginx_conf(f"{tmp}/up.conf", up_port, body)
    nginx_conf(f"{tmp}/px.conf", px_port, body, upstream_port=up_port)
    nginx_conf(f"{tmp}/gw.conf", gw_port, body, upstream_port=up_port, gateway_headers=True)
    upstream = start(["nginx", "-c", f"{tmp}/up.conf", "-p", tmp])
    nginx_px = start(["nginx", "-c", f"{tmp}/px.conf", "-p", tmp])
    nginx_gw = start(["nginx", "-c", f"{tmp}/gw.conf", "-p", tmp])
    wait_port(up_port)
    wait_port(px_port)
    wait_port(gw_port)
    fg = Ferrogate(args.binary, args.routes, up_port)
    wait_port(fg.http)
    upstream_worker = nginx_worker_pid(upstream)
    nginx_worker = nginx_worker_pid(nginx_px)
    gw_worker = nginx_worker_pid(nginx_gw)
    targets = [
        ("direct", f"http://127.0.0.1:{up_port}/", upstream_worker),
        ("nginx", f"http://127.0.0.1:{px_port}/", nginx_worker),
        ("nginx-gw", f"http://127.0.0.1:{gw_port}/", gw_worker),
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
              f"{args.runs} x {args.duration}s, wrk -t1 -c50 (CPU0), proxies on CPU1; "
              f"load average {report['load_before']} -> {loadavg()}")
        print(f"{'target':<10} {'req/s':>24} {'p50 ms':>16} {'p99 ms':>18} {'CPU us/req':>18}")
        for name, _, _ in targets:
            runs = results[name]
            if not runs:
                print(f"{name:<10} no valid runs")
                continue
            print(f"{name:<10} {summarize(runs, 'rps'):>24} {summarize(runs, 'p50_ms'):>16} "
                  f"{summarize(runs, 'p99_ms'):>18} {summarize(runs, 'cpu_us_per_req'):>18}")
        report["wrk"] = results
        if results["nginx"] and results["ferrogate"] and results["direct"]:
            rps = median(results["ferrogate"], "rps") / median(results["nginx"], "rps")
            p99 = median(results["ferrogate"], "p99_ms") / median(results["nginx"], "p99_ms")
            ratios = {
                "rps_vs_nginx": rps,
                "rps_vs_direct": median(results["ferrogate"], "rps") / median(results["direct"], "rps"),
                "nginx_rps_vs_direct": median(results["nginx"], "rps") / median(results["direct"], "rps"),
                "p99_vs_nginx": p99,
                "cpu_per_req_vs_nginx": median(results["ferrogate"], "cpu_us_per_req")
                / median(results["nginx"], "cpu_us_per_req"),
            }
            report["ratios"] = ratios
            print(f"ratio req/s ferrogate/nginx   = {ratios['rps_vs_nginx']:.2f}")
            print(f"ratio req/s ferrogate/direct  = {ratios['rps_vs_direct']:.2f} "
                  f"(nginx/direct {ratios['nginx_rps_vs_direct']:.2f})")
            print(f"ratio p99   ferrogate/nginx   = {ratios['p99_vs_nginx']:.2f}")
            print(f"ratio CPU/req ferrogate/nginx = {ratios['cpu_per_req_vs_nginx']:.2f}")
            if results["nginx-gw"]:
                gw_rps = median(results["ferrogate"], "rps") / median(results["nginx-gw"], "rps")
                gw_cpu = (median(results["ferrogate"], "cpu_us_per_req")
                          / median(results["nginx-gw"], "cpu_us_per_req"))
                ratios["rps_vs_nginx_gw"] = gw_rps
                ratios["cpu_per_req_vs_nginx_gw"] = gw_cpu
                print(f"ratio req/s ferrogate/nginx-gw = {gw_rps:.2f}, CPU/req {gw_cpu:.2f} "
                      "(nginx-gw: nginx also setting X-Forwarded-* and X-Request-ID)")
            ok = rps >= 1.0 and p99 <= 1.0
            print(f"target >= 1.0x nginx req/s at p99 <= nginx's: {'met' if ok else 'NOT met'}")
        if not args.quick:
            extra(args, up_port, tmp, fg, report)
    finally:
        fg.stop()
        for p in (upstream, nginx_px, nginx_gw):
            p.send_signal(signal.SIGQUIT)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
        report["load_after"] = loadavg()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)


def extra(args, up_port, tmp, fg_small, report):
    # Throughput with 10,000 routes vs the small instance, interleaved.
    big = Ferrogate(args.binary, 10_000, up_port)
    try:
        wait_port(big.http)
        run_wrk(f"http://127.0.0.1:{big.http}/", "r9999.bench.local", args.warmup, proxy_pid=big.pid)
        small_runs, big_runs = [], []
        for _ in range(max(3, args.runs)):
            small_runs.append(run_wrk(f"http://127.0.0.1:{fg_small.http}/", "bench.local",
                                      args.duration, proxy_pid=fg_small.pid))
            big_runs.append(run_wrk(f"http://127.0.0.1:{big.http}/", "r9999.bench.local",
                                    args.duration, proxy_pid=big.pid))
        small_runs = [r for r in small_runs if not (r["non2xx"] or r["socket_errors"])]
        big_runs = [r for r in big_runs if not (r["non2xx"] or r["socket_errors"])]
        if small_runs and big_runs:
            ratio = median(big_runs, "rps") / median(small_runs, "rps")
            print(f"routes {args.routes}: {summarize(small_runs, 'rps')} req/s, "
                  f"{summarize(small_runs, 'cpu_us_per_req')} CPU us/req")
            print(f"routes 10000: {summarize(big_runs, 'rps')} req/s, "
                  f"{summarize(big_runs, 'cpu_us_per_req')} CPU us/req")
            print(f"ratio req/s 10000/{args.routes} routes = {ratio:.2f} "
                  f"(target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
            report["routes"] = {"small": small_runs, "big": big_runs, "ratio": ratio}
        rss = rss_kib(big.pid) / 1024
        peak = rss_kib(big.pid, "VmHWM") / 1024
        print(f"RSS with 10000 routes after the runs: {rss:.1f} MiB (target <= 150: "
              f"{'met' if rss <= 150 else 'NOT met'}), peak {peak:.1f} MiB (the compile "
              f"at start); {args.routes} routes: {rss_kib(fg_small.pid) / 1024:.1f} MiB")
        report["rss_mib"] = {"10000": rss, "10000_peak": peak,
                             str(args.routes): rss_kib(fg_small.pid) / 1024}
    finally:
        big.stop()
    handshakes(args, up_port, tmp, report)


def h2load_batch(port, connections):
    """`connections` clients making one request each: one new TLS
    connection (full handshake) per request. Returns (succeeded, seconds)."""
    out = subprocess.run(
        ["taskset", "-c", "0", "h2load", "-n", str(connections), "-c", str(connections),
         "-m", "1", "--h1", "--connect-to", f"127.0.0.1:{port}", f"https://bench.local:{port}/"],
        capture_output=True, text=True).stdout
    done = re.search(r"finished in ([\d.]+)(m?s),", out)
    ok = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                   r"(\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not (done and ok and status):
        return 0, 0.0, out
    seconds = float(done.group(1)) / (1000 if done.group(2) == "ms" else 1)
    if int(ok.group(3)) or int(ok.group(4)) or int(status.group(1)) != int(ok.group(2)):
        return 0, 0.0, out
    return int(ok.group(2)), seconds, out


def handshakes(args, up_port, tmp, report):
    """Full TLS handshakes: per measurement, 10 batches of 500 clients that
    make one request each (below both listeners' backlogs, so no SYN is
    dropped). Rate = requests / time h2load reports; CPU = the proxy's
    utime+stime per request."""
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
    listen 127.0.0.1:{port} ssl backlog=4096;
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
        nginx_worker = nginx_worker_pid(nginx)
        peers = (("nginx", port, nginx_worker), ("ferrogate", fg.https, fg.pid))
        hz = os.sysconf("SC_CLK_TCK")
        runs = {"nginx": [], "ferrogate": []}
        for name, p, _ in peers:  # warm-up
            h2load_batch(p, 500)
        for _ in range(max(3, args.runs)):
            for name, p, pid in peers:
                before, total, seconds = cpu_ticks(pid), 0, 0.0
                for _ in range(10):
                    n, s, out = h2load_batch(p, 500)
                    if not n:
                        print(f"  handshakes {name}: failed batch\n{out}", file=sys.stderr)
                        total = 0
                        break
                    total, seconds = total + n, seconds + s
                    time.sleep(0.2)  # let TIME_WAIT sockets and accept queues settle
                if total:
                    cpu = (cpu_ticks(pid) - before) / hz * 1e6 / total
                    runs[name].append({"rate": total / seconds, "cpu_us": cpu})
        if runs["nginx"] and runs["ferrogate"]:
            for name, _, _ in peers:
                print(f"TLS handshakes {name:<9}: {summarize(runs[name], 'rate')}/s, "
                      f"{summarize(runs[name], 'cpu_us')} CPU us per handshake+request")
            rate = median(runs["ferrogate"], "rate") / median(runs["nginx"], "rate")
            cpu = median(runs["ferrogate"], "cpu_us") / median(runs["nginx"], "cpu_us")
            print(f"ratio handshakes/s ferrogate/nginx = {rate:.2f}; "
                  f"ratio CPU per handshake ferrogate/nginx = {cpu:.2f}")
            report["handshakes"] = {"runs": runs, "rate_ratio": rate, "cpu_ratio": cpu}
        else:
            print(f"TLS handshakes: no valid runs {runs}", file=sys.stderr)
    finally:
        fg.stop()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()


if __name__ == "__main__":
    main()
