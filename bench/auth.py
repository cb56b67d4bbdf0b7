#!/usr/bin/env python3
"""Cost of authentication and rate limiting: one Ferrogate, two hosts on
the same upstream, measured in the same run.

  bare.test  no policy
  auth.test  an AuthPolicy with a JWT provider (RS256, 2048-bit key, inline
             JWKS, audience, claims copied into a header) and a Local
             RateLimitPolicy keyed by the token's consumer (high enough
             never to refuse)

Placement (see the benchmarking recipe): wrk on CPU0; Ferrogate
(--threads 1) and the upstream (nginx, one worker, `return 200`) on CPU1.
Both targets get the same `Authorization: Bearer` header (one token, as a
client reusing its access token would send). Runs are interleaved
(bare, auth, bare, auth, ...); the median and min-max are printed and the
ratio of medians taken within the run. Target: auth/bare >= 0.85.

    python3 bench/auth.py [--runs 5] [--duration 10] [--binary target/release/ferrogate]

Tokens and keys are made with the openssl command line (no Python
packages needed).
"""
import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy  # noqa: E402  (helpers: require, free_port, wait_port, run_wrk, nginx_conf, start)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key(tmp):
    key = os.path.join(tmp, "jwt.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                    "-out", key], check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"],
                             check=True, capture_output=True, text=True).stdout
    n = bytes.fromhex(modulus.strip().split("=", 1)[1])
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": b64url(n), "e": "AQAB"}]}
    return key, json.dumps(jwks)


def make_token(key, tmp):
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    now = int(time.time())
    claims = {"iss": "https://issuer.bench", "aud": "bench", "sub": "user-1", "org": "A",
              "iat": now, "exp": now + 24 * 3600}
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    path = os.path.join(tmp, "signing-input")
    with open(path, "wb") as f:
        f.write(signing_input)
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key, path],
                         check=True, capture_output=True).stdout
    return f"{header}.{payload}.{b64url(sig)}"


def manifests(upstream_port, jwks):
    route = lambda name, host: f"""apiVersion: ferrogate.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: ["{host}"]
  rules:
  - name: all
    matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backends: [{{url: "http://127.0.0.1:{upstream_port}"}}]
"""
    policies = f"""apiVersion: ferrogate.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: jwt, namespace: default}}
spec:
  targetRefs: [{{kind: ApiRoute, name: auth}}]
  authentication:
    methods:
    - jwt:
        issuer: https://issuer.bench
        audiences: [bench]
        algorithms: [RS256]
        jwks: '{jwks}'
        claimsToHeaders: [{{claim: sub, header: x-user}}]
---
apiVersion: ferrogate.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-user, namespace: default}}
spec:
  targetRefs: [{{kind: ApiRoute, name: auth}}]
  limits:
  - name: per-user
    requests: 1000000000
    period: 1s
    key: [{{source: Consumer}}]
"""
    return "---\n".join([route("bare", "bare.test"), route("auth", "auth.test"), policies])


def run_wrk(url, host, token, duration, pid):
    before = proxy.cpu_ticks(pid)
    out = subprocess.run(
        ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{duration}s", "--latency",
         "-H", f"Host: {host}", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True).stdout
    result = proxy.parse_wrk(out)
    ticks = proxy.cpu_ticks(pid) - before
    result["cpu_us_per_req"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(result["requests"], 1)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/ferrogate"))
    args = ap.parse_args()
    proxy.require(args.binary, ("nginx", "wrk", "taskset", "openssl"))

    tmp = tempfile.mkdtemp(prefix="fg-bench-auth-")
    key, jwks = make_key(tmp)
    token = make_token(key, tmp)
    up_port = proxy.free_port()
    proxy.nginx_conf(f"{tmp}/up.conf", up_port, "")
    upstream = proxy.start(["nginx", "-c", f"{tmp}/up.conf", "-p", tmp])
    proxy.wait_port(up_port)
    manifest_dir = os.path.join(tmp, "manifests")
    os.mkdir(manifest_dir)
    with open(os.path.join(manifest_dir, "bench.yaml"), "w") as f:
        f.write(manifests(up_port, jwks))
    fg = proxy.start([args.binary, "serve", "--manifests", manifest_dir, "--threads", "1",
                      "--http", "127.0.0.1:0", "--https", "none", "--admin", "127.0.0.1:0"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        event = json.loads(fg.stdout.readline())
        port = int(event["http"].rsplit(":", 1)[1])
        proxy.wait_port(port)
        url = f"http://127.0.0.1:{port}/"
        check = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                "-H", "Host: auth.test", "-H", f"Authorization: Bearer {token}", url],
                               capture_output=True, text=True).stdout
        if check != "200":
            raise SystemExit(f"the auth route answered {check}, not 200: check the manifests")
        targets = [("bare", "bare.test"), ("auth", "auth.test")]
        for _, host in targets:
            run_wrk(url, host, token, args.warmup, fg.pid)
        results = {name: [] for name, _ in targets}
        for i in range(args.runs):
            for name, host in targets:
                r = run_wrk(url, host, token, args.duration, fg.pid)
                if r["non2xx"] or r["socket_errors"]:
                    print(f"  discarded {name} run {i}: {r['non2xx']} non-2xx {r['socket_errors']}",
                          file=sys.stderr)
                    continue
                results[name].append(r)
        print(f"# auth benchmark: JWT RS256 + local rate limit vs bare, {args.runs} x {args.duration}s, "
              f"wrk -t1 -c50 (CPU0), ferrogate --threads 1 and nginx upstream on CPU1")
        print(f"{'target':<6} {'req/s':>22} {'p50 ms':>16} {'p99 ms':>16} {'CPU us/req':>16}")
        for name, _ in targets:
            runs = results[name]
            if not runs:
                print(f"{name:<6} no valid runs")
                continue
            s = lambda k: proxy.summarize(runs, k)
            print(f"{name:<6} {s('rps'):>22} {s('p50_ms'):>16} {s('p99_ms'):>16} {s('cpu_us_per_req'):>16}")
        if results["bare"] and results["auth"]:
            med = lambda n, k: statistics.median(r[k] for r in results[n])
            print(f"ratio req/s auth/bare = {med('auth', 'rps') / med('bare', 'rps'):.2f} (target >= 0.85)")
            print(f"extra CPU per request = {med('auth', 'cpu_us_per_req') - med('bare', 'cpu_us_per_req'):.1f} us")
    finally:
        fg.send_signal(signal.SIGKILL)
        fg.wait()
        upstream.send_signal(signal.SIGQUIT)
        upstream.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
