#!/usr/bin/env python3
"""hyper's HTTP/1 server vs the least a server must do, in CPU per request.

Runs both modes of `dataplane/examples/h1_server_cost.rs` (one thread,
pinned to CPU1) under wrk (`-t1 -c50`, CPU0), interleaved, and prints each
mode's user and system microseconds per request and the difference: the
most an own HTTP/1 server path could take off the proxy's CPU per request.

    python3 bench/h1server.py [--runs 3] [--duration 6]
"""
import argparse
import os
import re
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_system_ticks(pid):
    """(utime, stime) of a process, in clock ticks; bench/proxy.py's
    cpu_ticks gives only their sum."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "dataplane",
                    "--example", "h1_server_cost"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "h1_server_cost")
    hz = os.sysconf("SC_CLK_TCK")
    results = {"hyper": [], "minimal": []}
    for _ in range(args.runs):
        for mode in results:
            proc = subprocess.Popen(["taskset", "-c", "1", binary, mode],
                                    stdout=subprocess.PIPE, text=True)
            try:
                port = int(proc.stdout.readline())
                before = user_system_ticks(proc.pid)
                out = subprocess.run(
                    ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{args.duration}s",
                     f"http://127.0.0.1:{port}/"],
                    capture_output=True, text=True, check=True).stdout
                after = user_system_ticks(proc.pid)
            finally:
                proc.kill()
                proc.wait()
            found = re.search(r"(\d+) requests in", out)
            if not found:
                raise SystemExit(f"wrk printed no request count:\n{out}")
            n = int(found.group(1))
            user = (after[0] - before[0]) / hz * 1e6 / n
            system = (after[1] - before[1]) / hz * 1e6 / n
            results[mode].append((n / args.duration, user, system))
            print(f"{mode:8} {n / args.duration:10.0f} req/s  user {user:.2f} us/req  "
                  f"system {system:.2f} us/req")
    medians = {mode: [statistics.median(r[i] for r in runs) for i in range(3)]
               for mode, runs in results.items()}
    for mode, (rps, user, system) in medians.items():
        print(f"median {mode:8} {rps:10.0f} req/s  user {user:.2f}  system {system:.2f}  "
              f"total {user + system:.2f} us/req")
    hyper, minimal = medians["hyper"], medians["minimal"]
    print(f"hyper - minimal: user {hyper[1] - minimal[1]:+.2f} us/req, "
          f"total {hyper[1] + hyper[2] - minimal[1] - minimal[2]:+.2f} us/req")


if __name__ == "__main__":
    main()
