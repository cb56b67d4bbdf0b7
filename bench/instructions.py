#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind.

Wall-clock comparisons on this machine move by several percent from run to
run (bench/RESULTS.md); an instruction count does not, so a change of 1-2%
in the gateway's own work shows here when req/s cannot show it. It is not
a speed figure (cache misses and branch mispredictions are not counted),
and not a target: use it to see where the work goes and whether a change
removed some.

One upstream (nginx, `return 200`), Ferrogate routing to it under
`valgrind --tool=callgrind` (one thread, access log off). After a warm-up,
the counters are zeroed, N requests are sent with h2load over 50
keep-alive HTTP/1.1 connections, and the counters dumped. Printed: the
total per request and the functions with the largest inclusive share.

    python3 bench/instructions.py [--requests 20000] [--top 25]
        [--user-agent UA] [--binary target/release/ferrogate]

Without --user-agent, h2load's own (`h2load nghttp2/...`) is sent; a
browser's is longer and costs more in device classification.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import (  # noqa: E402
    ROOT, free_port, nginx_conf, require, routes_yaml, start, wait_port,
)


def h2load(port, requests, user_agent):
    cmd = ["taskset", "-c", "0", "h2load", "--h1", "-n", str(requests), "-c", "50",
           "-H", ":authority: bench.local"]
    if user_agent:
        cmd += ["-H", f"user-agent: {user_agent}"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    ok = re.search(r"status codes: (\d+) 2xx", out)
    if not ok or int(ok.group(1)) != requests:
        raise SystemExit(f"not every request was answered 2xx:\n{out}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--user-agent", default="")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    args = parser.parse_args()
    if not shutil.which("callgrind_control"):
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    require(args.binary, tools=("nginx", "taskset", "h2load"))

    work = tempfile.mkdtemp(prefix="fg-instr-")
    up_port, port = free_port(), free_port()
    nginx_conf(os.path.join(work, "up.conf"), up_port, "")
    manifests = os.path.join(work, "manifests")
    os.mkdir(manifests)
    with open(os.path.join(manifests, "routes.yaml"), "w") as f:
        f.write(routes_yaml(1, up_port))
    out = os.path.join(work, "callgrind.out")
    procs = []
    try:
        procs.append(start(["nginx", "-c", os.path.join(work, "up.conf"), "-p", work],
                           stderr=subprocess.DEVNULL))
        wait_port(up_port)
        gateway = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                         args.binary, "serve", "--manifests", manifests, "--threads", "1",
                         "--http", f"127.0.0.1:{port}", "--https", "none", "--admin", "none",
                         "--access-log", "off"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gateway)
        wait_port(port, timeout=120)
        h2load(port, 1000, args.user_agent)
        subprocess.run(["callgrind_control", "-z", str(gateway.pid)],
                       capture_output=True, check=True)
        h2load(port, args.requests, args.user_agent)
        subprocess.run(["callgrind_control", "-d", str(gateway.pid)],
                       capture_output=True, check=True)
        time.sleep(1)
    finally:
        # nginx's master stops its worker on SIGTERM; SIGKILL would leave
        # the worker running.
        for p in procs:
            p.terminate()
            p.wait()
    dumps = sorted(f for f in os.listdir(work) if f.startswith("callgrind.out."))
    if not dumps:
        raise SystemExit("callgrind wrote no dump")
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                             os.path.join(work, dumps[-1])],
                            capture_output=True, text=True, check=True).stdout
    total = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", report)
    if not total:
        raise SystemExit("no totals in the callgrind report")
    per_request = int(total.group(1).replace(",", "")) / args.requests
    ua = args.user_agent or "h2load's"
    print(f"{per_request:,.0f} instructions per request (user space, {args.requests} "
          f"requests, User-Agent: {ua})")
    print("largest inclusive shares (functions of the binary and libc):")
    binary_name = os.path.basename(args.binary)
    shown = 0
    for line in report.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S+?):(.+?) \[(.+)\]$", line)
        if shown >= args.top:
            break
        if not m or not (m.group(5).endswith(binary_name) or "libc" in m.group(5)):
            continue
        count = int(m.group(1).replace(",", "")) / args.requests
        function = m.group(4)
        # The runtime's and the connection task's frames hold everything.
        if float(m.group(2)) >= 90:
            continue
        print(f"  {count:8,.0f}  {float(m.group(2)):5.1f}%  {function[:110]}")
        shown += 1


if __name__ == "__main__":
    main()
