#!/usr/bin/env python3
"""Memory per idle keep-alive client connection: Ferrogate vs nginx.

One upstream (nginx, `return 200`), nginx as a reverse proxy to it (one
worker) and Ferrogate routing to it (`--threads 1`), as in bench/proxy.py.
For each proxy: the RSS of its serving process, then N client
connections opened one after the other, each sending one GET and reading
the answer (so the upstream side stays one pooled connection), then the
RSS again with all N connections open and idle. Prints KiB per
connection and the ratio.

    python3 bench/idle.py [--connections 3000] [--binary target/release/ferrogate]
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy import (  # noqa: E402
    ROOT, Ferrogate, free_port, nginx_conf, nginx_worker_pid, require, rss_kib, start,
    wait_port,
)


def open_idle(port, n):
    """N connections, each after one answered GET."""
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"port {port} closed a connection before answering")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"port {port} answered {got[:40]!r}")
        conns.append(s)
    return conns


def measure(name, port, pid, n):
    before = rss_kib(pid)
    conns = open_idle(port, n)
    time.sleep(1)
    after = rss_kib(pid)
    for s in conns:
        s.close()
    per = (after - before) / n
    print(f"{name:10} RSS {before / 1024:6.1f} MiB -> {after / 1024:6.1f} MiB with {n} idle "
          f"connections: {per:5.1f} KiB per connection")
    return per


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    args = parser.parse_args()
    require(args.binary, tools=("nginx", "taskset"))
    # Children inherit the limit: every proxy needs a descriptor per client.
    need = args.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"the open-file limit ({hard}) is below {need}: raise `ulimit -n`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    work = tempfile.mkdtemp(prefix="fg-idle-")
    up_port, px_port = free_port(), free_port()
    nginx_conf(os.path.join(work, "up.conf"), up_port, "")
    nginx_conf(os.path.join(work, "px.conf"), px_port, "", upstream_port=up_port)
    procs = []
    try:
        for conf in ("up.conf", "px.conf"):
            procs.append(start(["nginx", "-c", os.path.join(work, conf), "-p", work],
                               stderr=subprocess.DEVNULL))
        wait_port(up_port)
        wait_port(px_port)
        gateway = Ferrogate(args.binary, 1, up_port)
        wait_port(gateway.http)
        nginx_per = measure("nginx", px_port, nginx_worker_pid(procs[1]), args.connections)
        ours = measure("ferrogate", gateway.http, gateway.pid, args.connections)
        gateway.stop()
        print(f"ratio KiB per idle connection ferrogate/nginx = {ours / max(nginx_per, 0.001):.2f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
