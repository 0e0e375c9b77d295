# Shared by load-tests/bench and load-tests/scenarios: private Redis and gateway processes on
# free loopback ports, stopped when the calling script exits. Sourced, not run.

TOKEN=bench-service-token-0123456789
work=$(mktemp -d)
pids=()
REDIS_PORT=
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$REDIS_PORT" ] && redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {
    for _ in $(seq 400); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "load-tests: $1 did not answer" >&2
    exit 1
}

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

start_redis() {
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
        --daemonize yes --logfile "$work/redis.log"
    for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.05; done
}

# Starts the release gateway on Redis (the private one, or the URL given) with the default
# quotas plus `bench` (which never runs out) and a creation throttle no load test reaches;
# sets GATEWAY_PID, BASE and ADMIN. GATEWAY_RUNNER, when set, is the command it runs under
# (load-tests/instructions: valgrind).
start_gateway() {
    local redis_url=${1:-redis://127.0.0.1:$REDIS_PORT}
    cat >"$work/gateway.toml" <<TOML
[session]
creations_per_minute = 1000000000
creation_burst = 100000000
max_creations_per_second = 1000000000

[quotas.bench]
limit = 1000000000
window = "month"
counter = "concepts_generated"

[quotas.concept_generation]
limit = 10
window = "month"
counter = "concepts_generated"

[quotas.concept_refinement]
limit = 10
window = "24 hours"
counter = "concepts_refined"

[quotas.concept_storage]
limit = 10
window = "month"
counter = "concepts_stored"
${GATEWAY_TOML_EXTRA:-}
TOML
    local port admin_port
    port=$(free_port)
    admin_port=$(free_port)
    SESSIONGATE_LISTEN=127.0.0.1:$port SESSIONGATE_ADMIN_LISTEN=127.0.0.1:$admin_port \
        REDIS_URL=$redis_url SESSIONGATE_SERVICE_TOKEN=$TOKEN \
        SESSIONGATE_CONFIG=$work/gateway.toml RUST_LOG=warn ${GATEWAY_RUNNER:-} target/release/sessiongate &
    GATEWAY_PID=$!
    pids+=("$GATEWAY_PID")
    BASE=http://127.0.0.1:$port
    ADMIN=http://127.0.0.1:$admin_port
    wait_http "$ADMIN/readyz/redis"
}
