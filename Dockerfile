# syntax=docker/dockerfile:1
#
# Ferrogate's container image: the one `ferrogate` binary (controller,
# dataplane, certgen, ...: the subcommand is the first argument) on a
# distroless base, running as a non-root user.
#
#   docker build -t ferrogate:dev .
#   docker run --rm ferrogate:dev --help
#
# The Helm chart runs it with a read-only root file system; the binary
# writes only to its state directory and /tmp, which the chart mounts.

# --- build --------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The profile-guided release build (scripts/build-pgo.sh: two release
# builds around a minute of example traffic on loopback; it installs llvm-NN
# and nghttp2-client from Debian). Exactly the dependency versions in
# Cargo.lock (--locked).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    ./scripts/build-pgo.sh \
 && install -D -m 0755 target/pgo/ferrogate /out/ferrogate

# --- run ----------------------------------------------------------------------
# glibc and libgcc (for the Rust runtime), CA certificates, no shell, no
# package manager; the `nonroot` variant defaults to UID/GID 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ferrogate /usr/local/bin/ferrogate
USER 65532:65532
# dataplane HTTP, HTTPS and admin; controller snapshot stream
EXPOSE 8080 8443 9901 9443
ENTRYPOINT ["/usr/local/bin/ferrogate"]
CMD ["--help"]
