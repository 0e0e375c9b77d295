//! Telemetry: the Prometheus recorder, every metric's name and description, and the
//! logging set-up. Other modules record through the small functions here, so a metric's
//! name, labels and meaning live in one place; this module never decides anything.
//!
//! Conventions: base units (`_seconds`, `_bytes`), counters end in `_total`, and label
//! values are bounded (route templates, operation names from the configuration, fixed
//! enums): never a raw path or a session id.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets from 100 µs to 10 s: sub-millisecond Redis calls and slow outliers alike.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const BATCH_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// The process-wide recorder. The first call installs it (and describes every metric);
/// later calls, e.g. from several gateways in one test process, share it.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FLUSH_BATCH_ROWS.into()), &BATCH_BUCKETS))
                .and_then(|b| b.install_recorder());
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install the metrics recorder; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The exposition text for `/metrics`.
/// Folds the latency samples recorded since the last call into their histograms. A scrape
/// does it too, but until one comes every request's samples are kept (8 bytes each, tens of
/// MiB an hour under load), so the gateway calls this every few seconds itself.
pub fn upkeep() {
    if let Some(handle) = recorder() {
        handle.run_upkeep();
    }
}

pub fn render() -> String {
    let Some(handle) = recorder() else {
        return String::new();
    };
    handle.run_upkeep();
    PROCESS
        .get_or_init(metrics_process::Collector::default)
        .collect();
    handle.render()
}

static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

pub const HTTP_REQUESTS: &str = "sessiongate_http_requests_total";
pub const HTTP_DURATION: &str = "sessiongate_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "sessiongate_http_requests_in_flight";
pub const HTTP_CONNECTIONS: &str = "sessiongate_http_connections_open";
pub const HTTP_CONNECTIONS_PARKED: &str = "sessiongate_http_connections_parked";
pub const REDIS_DURATION: &str = "sessiongate_redis_command_duration_seconds";
pub const REDIS_ERRORS: &str = "sessiongate_redis_errors_total";
pub const REDIS_RELOADS: &str = "sessiongate_redis_script_reloads_total";
pub const REDIS_UP: &str = "sessiongate_redis_up";
pub const SESSIONS_CREATED: &str = "sessiongate_sessions_created_total";
pub const SESSIONS_SYNCED: &str = "sessiongate_sessions_synced_total";
pub const SESSIONS_READ: &str = "sessiongate_sessions_read_total";
pub const SESSIONS_ERASED: &str = "sessiongate_sessions_erased_total";
pub const CONFIG_RELOADS: &str = "sessiongate_config_reloads_total";
pub const CREATIONS_THROTTLED: &str = "sessiongate_session_creations_throttled_total";
pub const QUOTA_DECISIONS: &str = "sessiongate_quota_decisions_total";
pub const QUOTA_COST: &str = "sessiongate_quota_consumed_cost_total";
pub const QUOTA_REFUNDS: &str = "sessiongate_quota_refunds_total";
pub const QUOTA_REPLAYS: &str = "sessiongate_quota_idempotent_replays_total";
pub const FLUSH_BACKLOG: &str = "sessiongate_flush_backlog_sessions";
pub const FLUSH_OLDEST_AGE: &str = "sessiongate_flush_oldest_age_seconds";
pub const FLUSH_ROWS: &str = "sessiongate_flush_rows_total";
pub const FLUSH_BATCHES: &str = "sessiongate_flush_batches_total";
pub const FLUSH_BATCH_ROWS: &str = "sessiongate_flush_batch_rows";
pub const FLUSH_DURATION: &str = "sessiongate_flush_duration_seconds";
pub const FLUSH_RETRIES: &str = "sessiongate_flush_retries_total";
pub const FLUSH_DEAD_LETTERS: &str = "sessiongate_flush_dead_letters_total";
pub const FLUSH_REFUSALS: &str = "sessiongate_flush_backpressure_refusals_total";
pub const READ_THROUGH: &str = "sessiongate_read_through_total";
pub const PROXY_REQUESTS: &str = "sessiongate_proxy_requests_total";
pub const NEAR_CACHE_HITS: &str = "sessiongate_near_cache_hits_total";
pub const NEAR_CACHE_MISSES: &str = "sessiongate_near_cache_misses_total";
pub const NEAR_CACHE_INVALIDATIONS: &str = "sessiongate_near_cache_invalidations_total";
pub const NEAR_CACHE_FLUSHES: &str = "sessiongate_near_cache_flushes_total";
pub const NEAR_CACHE_ENTRIES: &str = "sessiongate_near_cache_entries";
pub const BUILD_INFO: &str = "sessiongate_build_info";

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template (unmatched: no route; panicked: a handler bug answered 500), method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from request head to response, by route template and method."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "Public API requests being handled now.");
    describe_gauge!(HTTP_CONNECTIONS, "Open client connections, by listener.");
    describe_gauge!(HTTP_CONNECTIONS_PARKED, "Open client connections idle long enough to wait for their next request without HTTP buffers, by listener (a part of sessiongate_http_connections_open).");
    describe_histogram!(
        REDIS_DURATION,
        Unit::Seconds,
        "Redis round trip time, by operation (script or command)."
    );
    describe_counter!(REDIS_ERRORS, "Redis calls that failed, by kind: timeout (Redis connected but slower than redis.timeout_ms), unreachable (no connection: Redis down or reconnecting), redis (an error from Redis or the connection), reply (unexpected answer).");
    describe_counter!(
        REDIS_RELOADS,
        "Lua function libraries loaded again after Redis answered that a function was missing."
    );
    describe_gauge!(REDIS_UP, "1 when a connection to Redis is up, else 0.");
    describe_counter!(SESSIONS_CREATED, "Sessions created.");
    describe_counter!(
        SESSIONS_SYNCED,
        "Sync requests, by result: adopted the client's id, kept the current session, created one."
    );
    describe_counter!(SESSIONS_READ, "Session reads (info and preferences).");
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads (SIGHUP), by result: ok (applied), error (the file did not validate; nothing changed)."
    );
    describe_counter!(
        SESSIONS_ERASED,
        "Erasure requests, by result: erased, absent (nothing in Redis; the system of record was still cleared), unavailable (503, to be repeated)."
    );
    describe_counter!(
        CREATIONS_THROTTLED,
        "Session creations refused by the per-IP throttle."
    );
    describe_counter!(QUOTA_DECISIONS, "Quota consume decisions, by operation and decision: granted, denied, shadow_denied (granted by a shadow policy, which enforcement would have refused); near_limit counts grants past the near-limit fraction.");
    describe_counter!(QUOTA_COST, "Quota cost granted, by operation.");
    describe_counter!(QUOTA_REFUNDS, "Quota refunds, by operation.");
    describe_counter!(
        QUOTA_REPLAYS,
        "Quota calls answered from an idempotency record, by operation."
    );
    describe_gauge!(
        FLUSH_BACKLOG,
        "Sessions changed but not yet written to Supabase (all shards, claimed included)."
    );
    describe_gauge!(
        FLUSH_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest change not yet written to Supabase."
    );
    describe_counter!(FLUSH_ROWS, "Rows written to Supabase.");
    describe_counter!(FLUSH_BATCHES, "Upsert requests to Supabase, by result: ok, retry (put back), rejected (split to isolate refused rows).");
    describe_histogram!(FLUSH_BATCH_ROWS, "Rows per upsert request.");
    describe_histogram!(
        FLUSH_DURATION,
        Unit::Seconds,
        "Time of one upsert request to Supabase."
    );
    describe_counter!(
        FLUSH_RETRIES,
        "Flush rounds that ended in a retryable failure and backed off."
    );
    describe_counter!(
        FLUSH_DEAD_LETTERS,
        "Rows refused by Supabase and parked in the dead-letter stream."
    );
    describe_counter!(
        FLUSH_REFUSALS,
        "Session creations refused because the write-behind backlog is full."
    );
    describe_counter!(
        READ_THROUGH,
        "Sessions looked up in Supabase after a Redis miss, by result: restored, missing, throttled (over the budget), error, timeout (past flush.read_through_timeout_ms)."
    );
    describe_counter!(PROXY_REQUESTS, "Gateway-mode requests, by route pattern and outcome: committed, refunded, denied (429), rejected (not forwarded: no usable session, or Redis unreachable), forwarded (unmetered), upstream_error, upstream_timeout, client_gone (metered, the client left before its answer; the reservation was still settled).");
    describe_counter!(
        NEAR_CACHE_HITS,
        "Session reads answered from the near cache."
    );
    describe_counter!(
        NEAR_CACHE_MISSES,
        "Session reads the near cache could not answer (sent to Redis)."
    );
    describe_counter!(
        NEAR_CACHE_INVALIDATIONS,
        "Session keys Redis announced as changed to the near cache."
    );
    describe_counter!(NEAR_CACHE_FLUSHES, "Times the whole near cache was dropped, by reason: lost (a tracking connection failed or went silent), reconnected (a new tracking connection), lagged (invalidations missed), everything (Redis flushed its keys), reload (a configuration reload: records of the old policies' shape).");
    describe_gauge!(
        NEAR_CACHE_ENTRIES,
        "Session records held in the near cache."
    );
    describe_gauge!(BUILD_INFO, "Build of the running gateway (always 1).");
    // Counters of rare events start at 0, so `increase()` sees their first occurrence.
    for rare in [
        FLUSH_ROWS,
        CREATIONS_THROTTLED,
        REDIS_RELOADS,
        FLUSH_RETRIES,
        FLUSH_DEAD_LETTERS,
        FLUSH_REFUSALS,
        NEAR_CACHE_INVALIDATIONS,
    ] {
        counter!(rare).absolute(0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => env!("BUILD_GIT_SHA"))
        .set(1.0);
    PROCESS
        .get_or_init(metrics_process::Collector::default)
        .describe();
}

/// Methods beyond the usual ones collapse into `OTHER` to keep label values bounded.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

/// Metric handles by label values. The registry would build and hash a labelled key (and
/// allocate the label strings) on every call; on the request path a read-locked map of
/// ready handles is cheaper. Label values here are bounded, so the maps stay small.
struct Handles<K, H> {
    map: OnceLock<RwLock<HashMap<K, H>>>,
}

impl<K: Eq + Hash, H> Handles<K, H> {
    const fn new() -> Self {
        Handles {
            map: OnceLock::new(),
        }
    }

    fn with(&self, key: K, make: impl FnOnce() -> H, use_handle: impl FnOnce(&H)) {
        let map = self.map.get_or_init(Default::default);
        if let Ok(handles) = map.read() {
            if let Some(handle) = handles.get(&key) {
                return use_handle(handle);
            }
        }
        let handle = make();
        use_handle(&handle);
        if let Ok(mut handles) = map.write() {
            handles.insert(key, handle);
        }
    }
}

static HTTP: Handles<(&str, &str, u16), (Counter, Histogram)> = Handles::new();
static REDIS: Handles<&str, Histogram> = Handles::new();
static PROXY: Handles<(Arc<str>, &str), Counter> = Handles::new();

pub fn http_request(route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
    HTTP.with(
        (route, method, status),
        || {
            (
                counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string()),
                histogram!(HTTP_DURATION, "route" => route, "method" => method),
            )
        },
        |(requests, duration)| {
            requests.increment(1);
            duration.record(elapsed.as_secs_f64());
        },
    );
}

pub fn in_flight(delta: f64) {
    static IN_FLIGHT: OnceLock<Gauge> = OnceLock::new();
    IN_FLIGHT
        .get_or_init(|| gauge!(HTTP_IN_FLIGHT))
        .increment(delta);
}

/// The parked-connections gauge of a listener, looked up once: it moves on every request.
pub fn connections_parked(listener: &'static str) -> metrics::Gauge {
    gauge!(HTTP_CONNECTIONS_PARKED, "listener" => listener)
}

pub fn connection(listener: &'static str, delta: f64) {
    gauge!(HTTP_CONNECTIONS, "listener" => listener).increment(delta);
}

pub fn redis_call(op: &'static str, elapsed: Duration) {
    REDIS.with(
        op,
        || histogram!(REDIS_DURATION, "op" => op),
        |duration| duration.record(elapsed.as_secs_f64()),
    );
}

pub fn redis_error(kind: &'static str) {
    counter!(REDIS_ERRORS, "kind" => kind).increment(1);
}

pub fn script_reloaded() {
    counter!(REDIS_RELOADS).increment(1);
}

pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
}

/// A near-cache lookup: the two counters are looked up once, as they move on every read.
pub fn near_cache_lookup(hit: bool) {
    static LOOKUPS: OnceLock<(Counter, Counter)> = OnceLock::new();
    let (hits, misses) =
        LOOKUPS.get_or_init(|| (counter!(NEAR_CACHE_HITS), counter!(NEAR_CACHE_MISSES)));
    if hit { hits } else { misses }.increment(1);
}

pub fn near_cache_invalidated() {
    counter!(NEAR_CACHE_INVALIDATIONS).increment(1);
}

pub fn near_cache_flushed(reason: &'static str) {
    counter!(NEAR_CACHE_FLUSHES, "reason" => reason).increment(1);
}

pub fn near_cache_entries(entries: usize) {
    gauge!(NEAR_CACHE_ENTRIES).set(entries as f64);
}

pub fn session_created() {
    counter!(SESSIONS_CREATED).increment(1);
}

pub fn session_synced(result: &'static str) {
    counter!(SESSIONS_SYNCED, "result" => result).increment(1);
}

pub fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS, "result" => result).increment(1);
}

pub fn session_erased(result: &'static str) {
    counter!(SESSIONS_ERASED, "result" => result).increment(1);
}

/// Looked up once: it moves on every read.
pub fn session_read() {
    static READS: OnceLock<Counter> = OnceLock::new();
    READS.get_or_init(|| counter!(SESSIONS_READ)).increment(1);
}

pub fn creation_throttled() {
    counter!(CREATIONS_THROTTLED).increment(1);
}

/// One quota policy's counters, looked up once (when the policies are built): they move on
/// every metered request, and the registry would hash their labels and allocate the
/// operation's name each time.
pub struct QuotaMeters {
    granted: Counter,
    denied: Counter,
    shadow_denied: Counter,
    near_limit: Counter,
    cost: Counter,
    replays: Counter,
    refunds: Counter,
}

impl QuotaMeters {
    pub fn new(operation: &str) -> QuotaMeters {
        let decision = |decision: &'static str| counter!(QUOTA_DECISIONS, "operation" => operation.to_string(), "decision" => decision);
        let of = |name: &'static str| counter!(name, "operation" => operation.to_string());
        QuotaMeters {
            granted: decision("granted"),
            denied: decision("denied"),
            shadow_denied: decision("shadow_denied"),
            near_limit: decision("near_limit"),
            cost: of(QUOTA_COST),
            replays: of(QUOTA_REPLAYS),
            refunds: of(QUOTA_REFUNDS),
        }
    }

    pub fn granted(&self, cost: u64, near_limit: bool) {
        self.granted.increment(1);
        self.cost.increment(cost);
        if near_limit {
            self.near_limit.increment(1);
        }
    }

    /// A shadow policy's grant that enforcement would have refused.
    pub fn shadow_denied(&self, cost: u64, near_limit: bool) {
        self.shadow_denied.increment(1);
        self.cost.increment(cost);
        if near_limit {
            self.near_limit.increment(1);
        }
    }

    pub fn denied(&self) {
        self.denied.increment(1);
    }

    pub fn replayed(&self) {
        self.replays.increment(1);
    }

    pub fn refunded(&self) {
        self.refunds.increment(1);
    }
}

pub fn flush_backlog(sessions: u64, oldest_age: Duration) {
    gauge!(FLUSH_BACKLOG).set(sessions as f64);
    gauge!(FLUSH_OLDEST_AGE).set(oldest_age.as_secs_f64());
}

pub fn flush_batch(result: &'static str, rows: usize, elapsed: Duration) {
    counter!(FLUSH_BATCHES, "result" => result).increment(1);
    histogram!(FLUSH_BATCH_ROWS).record(rows as f64);
    histogram!(FLUSH_DURATION).record(elapsed.as_secs_f64());
}

pub fn flush_rows(rows: usize) {
    counter!(FLUSH_ROWS).increment(rows as u64);
}

pub fn flush_retry() {
    counter!(FLUSH_RETRIES).increment(1);
}

pub fn flush_dead_letter() {
    counter!(FLUSH_DEAD_LETTERS).increment(1);
}

pub fn flush_refusal() {
    counter!(FLUSH_REFUSALS).increment(1);
}

pub fn read_through(result: &'static str) {
    counter!(READ_THROUGH, "result" => result).increment(1);
}

/// `route` is a configured pattern: bounded by the configuration.
pub fn proxy_request(route: &Arc<str>, outcome: &'static str) {
    PROXY.with(
        (route.clone(), outcome),
        || counter!(PROXY_REQUESTS, "route" => route.to_string(), "outcome" => outcome),
        |requests| requests.increment(1),
    );
}
