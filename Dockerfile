# syntax=docker/dockerfile:1
#
# sessiongate container image.
#
#   docker build -t sessiongate .          (BuildKit: the default builder of Docker 23+)
#
# Two stages: the builder compiles the release binary with BuildKit cache mounts for the
# cargo registry and the target folder, so a rebuild after a source change recompiles only
# the sessiongate crate; the runtime stage is Debian slim with CA certificates (reqwest uses
# rustls but reads the system roots for https:// Supabase) and nothing else.
#
# The build needs only crates.io. `.git` is not sent to the builder (.dockerignore), so the
# commit for sessiongate_build_info comes in as a build argument:
#   docker build --build-arg GIT_SHA=$(git rev-parse --short=12 HEAD) .

FROM rust:1-bookworm AS builder
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
WORKDIR /src
COPY . .
# target/ lives in a cache mount that is not part of the image, so the binary is copied out
# of it in the same step.
RUN --mount=type=cache,id=sessiongate-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=sessiongate-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=sessiongate-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin sessiongate \
    && install -D -m 0755 target/release/sessiongate /out/sessiongate

FROM debian:bookworm-slim AS runtime
# No version pins on purpose: ca-certificates should be whatever bookworm ships today.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sessiongate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sessiongate
COPY --from=builder /out/sessiongate /usr/local/bin/sessiongate

# In a container the gateway must listen on every interface. Environment variables win over
# the TOML file (SESSIONGATE_CONFIG), so change these two here or in the environment, not in
# the file.
ENV SESSIONGATE_LISTEN=0.0.0.0:8080 \
    SESSIONGATE_ADMIN_LISTEN=0.0.0.0:9090

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9090

# The slim image has no curl or wget, and the gateway has no health-check subcommand, so the
# check is plain bash: open /dev/tcp to the admin listener's port (taken from
# SESSIONGATE_ADMIN_LISTEN), send GET /healthz and require a 200 status line. bash is part of
# debian:bookworm-slim; no extra package, no extra attack surface.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${SESSIONGATE_ADMIN_LISTEN##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == 'HTTP/1.1 200'* ]]"]

# SIGTERM: stop accepting, finish in-flight requests (http.shutdown_grace_ms, 30 s) and
# drain the write-behind flusher (flush.drain_ms, 10 s). Give `docker stop` enough time:
# `docker stop -t 45`, or stop_grace_period in compose.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sessiongate"]
