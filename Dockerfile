# syntax=docker/dockerfile:1
#
# harmony-proxy container image.
#
#   docker build -t harmony-proxy:latest .
#   docker run --rm -p 8001:8001 -e UPSTREAM_BASE_URL=http://gpu1:8080/v1 harmony-proxy:latest
#
# The o200k vocabulary is materialised at build time (from tiktoken-rs, no network), so the
# container starts offline and never writes to its filesystem: it runs with a read-only root.

############################ build ############################
FROM rust:1-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# Only what the release binary needs (the tests/ and fuzz/ trees are not part of the build).
COPY Cargo.toml Cargo.lock proxy.toml ./
COPY src/ src/
COPY filters/ filters/
COPY pipelines/ pipelines/

# BuildKit cache mounts keep the registry and target/ between builds; target/ is a cache
# mount, so the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin harmony-proxy \
 && install -m 0755 target/release/harmony-proxy /usr/local/bin/harmony-proxy

# `check` loads the Harmony encoding, which writes o200k_base.tiktoken into
# $HARMONY_PROXY_CACHE (filters/src/vocab.rs: materialise, verified against its sha256).
# At run time the proxy finds a correct copy there and only reads it.
RUN HARMONY_PROXY_CACHE=/opt/harmony-proxy/cache \
    /usr/local/bin/harmony-proxy check --config /src/proxy.toml \
 && echo "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d  /opt/harmony-proxy/cache/o200k_base.tiktoken" \
    | sha256sum -c -

############################ run ############################
# debian:bookworm-slim rather than gcr.io/distroless/cc-debian12:nonroot: a Docker
# HEALTHCHECK needs a command inside the image, and harmony-proxy has no self-probe
# subcommand (`doctor` checks the upstream, not the proxy). distroless has no curl/wget, so
# the simplest honest option is bookworm-slim (same glibc as the rust:1-bookworm build
# stage) plus curl. Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/kubernetes/deployment.yaml; curl is there for `docker run` / compose.
FROM debian:bookworm-slim

# curl is not version-pinned on purpose: a pin to an exact Debian revision breaks the build
# at the next security update of bookworm; the base image tag is what fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot

COPY --from=build /usr/local/bin/harmony-proxy /usr/local/bin/harmony-proxy
COPY --from=build /opt/harmony-proxy/cache/ /opt/harmony-proxy/cache/
COPY proxy.toml /etc/harmony-proxy/proxy.toml

# HARMONY_PROXY_CACHE: where the baked vocabulary is (read-only at run time).
# LISTEN: read by the shipped proxy.toml (`listen = "${LISTEN:-127.0.0.1:8001}"`).
ENV HARMONY_PROXY_CACHE=/opt/harmony-proxy/cache \
    LISTEN=0.0.0.0:8001

# Numeric user (the `nonroot` user created above, uid 65532 as in distroless): Kubernetes'
# runAsNonRoot can only verify a numeric USER.
USER 65532:65532
WORKDIR /etc/harmony-proxy

# The image's own check, as the run-time user: config valid, vocabulary found without
# writing (the cache dir is root-owned, so a rewrite would fail here).
RUN ["/usr/local/bin/harmony-proxy", "check", "--config", "/etc/harmony-proxy/proxy.toml"]

EXPOSE 8001

# Probes the port LISTEN names on loopback (plain HTTP: with server.tls set, use https -k).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"http://127.0.0.1:${LISTEN##*:}/healthz\" || exit 1"]

# SIGTERM (Docker's default stop signal) starts the graceful shutdown: in-flight streams
# get server.shutdown_grace (30s) to finish; give `docker stop -t 40` accordingly.
ENTRYPOINT ["/usr/local/bin/harmony-proxy"]
CMD ["serve", "--config", "/etc/harmony-proxy/proxy.toml"]
