#!/usr/bin/env python3
"""Where Ferrogate sits between nginx and the least a tokio proxy does.

Runs, on bench/proxy.py's placement (wrk -t1 -c50 on CPU0; the proxy and
the upstream nginx on CPU1), interleaved and repeated:

- nginx as a reverse proxy (one worker, upstream keep-alive);
- Ferrogate (`serve --threads 1`, access log off);
- `dataplane/examples/proxy_floor.rs`: a bare tokio HTTP/1 relay (no
  routing, header changes, timers or pools), plain and with the yield
  before the upstream write that Ferrogate's direct exchange makes;
- the same relay with extra busy work per request (`--spin` rounds),
  either after reading the request (before the upstream write) or after
  reading the upstream's answer (before the client write).

For each it prints req/s and the ratio to nginx, wrk's p50 and p99
latency, the proxy's user and system CPU microseconds per request and its
involuntary context switches per request (on this placement, how often
the upstream preempts it).

    python3 bench/floor.py [--runs 3] [--duration 8] [--spin 3000]
                           [--binary target/release/ferrogate]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import (  # noqa: E402
    ROOT, Ferrogate, free_port, nginx_conf, nginx_worker_pid, parse_wrk, require, start,
    wait_port)


def counters(pid):
    """(utime ticks, stime ticks, involuntary switches) over all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
    return int(fields[11]), int(fields[12]), switches


def measure(port, pid, duration):
    before = counters(pid)
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
         "-H", "Host: bench.local", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    after = counters(pid)
    if not re.search(r"(\d+) requests in", out) or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk run against port {port} failed or saw errors:\n{out}")
    wrk = parse_wrk(out)
    n = wrk["requests"]
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "rps": n / duration,
        "p50": wrk["p50_ms"],
        "p99": wrk["p99_ms"],
        "user": (after[0] - before[0]) / hz * 1e6 / n,
        "system": (after[1] - before[1]) / hz * 1e6 / n,
        "preempted": (after[2] - before[2]) / n,
    }


class Floor:
    def __init__(self, binary, upstream_port, flags):
        self.proc = start([binary, f"127.0.0.1:{upstream_port}"] + flags,
                          stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--spin", type=int, default=3000)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    args = ap.parse_args()
    require(args.binary)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "dataplane",
                    "--example", "proxy_floor"], cwd=ROOT, check=True)
    floor_binary = os.path.join(ROOT, "target", "release", "examples", "proxy_floor")

    tmp = tempfile.mkdtemp(prefix="fg-floor-")
    up_port, px_port = free_port(), free_port()
    nginx_conf(f"{tmp}/up.conf", up_port, "")
    nginx_conf(f"{tmp}/px.conf", px_port, "", upstream_port=up_port)
    upstream = start(["nginx", "-c", f"{tmp}/up.conf", "-p", tmp])
    nginx_px = start(["nginx", "-c", f"{tmp}/px.conf", "-p", tmp])
    wait_port(up_port)
    wait_port(px_port)
    nginx_worker = nginx_worker_pid(nginx_px)
    fg = Ferrogate(args.binary, 1, up_port)
    wait_port(fg.http)
    spin = str(args.spin)
    floors = {
        "floor": [],
        "floor+yield": ["--yield"],
        f"floor+yield+{spin} before": ["--yield", "--spin-request", spin],
        f"floor+yield+{spin} after": ["--yield", "--spin-response", spin],
    }
    names = ["nginx", "ferrogate"] + list(floors)
    results = {name: [] for name in names}
    try:
        for _ in range(args.runs):
            results["nginx"].append(measure(px_port, nginx_worker, args.duration))
            results["ferrogate"].append(measure(fg.http, fg.pid, args.duration))
            for name, flags in floors.items():
                floor = Floor(floor_binary, up_port, flags)
                try:
                    results[name].append(measure(floor.port, floor.pid, args.duration))
                finally:
                    floor.stop()
    finally:
        fg.stop()
        for proc in (nginx_px, upstream):
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
           for name, runs in results.items()}
    print(f"# floor: {args.runs} x {args.duration}s, wrk -t1 -c50 (CPU0), "
          f"proxy and upstream on CPU1; medians")
    print(f"{'proxy':28} {'req/s':>8} {'x nginx':>8} {'p50 ms':>7} {'p99 ms':>7} {'user':>6} "
          f"{'system':>7} {'total':>6} {'preempted/req':>14}")
    nginx_rps = med["nginx"]["rps"]
    for name in names:
        m = med[name]
        print(f"{name:28} {m['rps']:8.0f} {m['rps'] / nginx_rps:8.2f} {m['p50']:7.2f} "
              f"{m['p99']:7.2f} {m['user']:6.2f} {m['system']:7.2f} "
              f"{m['user'] + m['system']:6.2f} {m['preempted']:14.3f}")


if __name__ == "__main__":
    main()
