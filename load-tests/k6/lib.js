// Shared helpers of the sessiongate k6 scenarios: configuration from __ENV, request
// parameters, and checks of the bodies the contract promises (shared/spec/contract.md).
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Rate } from 'k6/metrics';
import { randomBytes } from 'k6/crypto';

/** @typedef {import('k6').JSONValue} JSONValue */
/** @typedef {import('k6').JSONObject} JSONObject */
/** @typedef {import('k6/http').Response} Response */
/** @typedef {import('k6/http').Params} Params */
/** @typedef {import('k6/http').CookieJar} CookieJar */
/** @typedef {import('k6/options').Threshold} Threshold */
/** @typedef {import('k6').Checkers<JSONObject | null>} BodyCheckers */

// ---------------------------------------------------------------------------------------
// Configuration. A malformed value throws in the init context, so k6 stops before any
// load is sent instead of running with a silently different setting.

/**
 * @param {string} name
 * @param {string} fallback
 * @returns {string}
 */
export function envString(name, fallback) {
    const value = __ENV[name];
    return value === undefined || value === '' ? fallback : value;
}

/**
 * @param {string} name
 * @param {number} fallback
 * @param {number} [min]
 * @returns {number}
 */
export function envInt(name, fallback, min = 0) {
    const raw = envString(name, String(fallback));
    if (!/^\d+$/.test(raw) || Number(raw) < min) {
        throw new Error(`${name} must be a whole number >= ${min}, got ${JSON.stringify(raw)}`);
    }
    return Number(raw);
}

/**
 * @param {string} name
 * @param {number} fallback
 * @returns {number}
 */
export function envFraction(name, fallback) {
    const raw = envString(name, String(fallback));
    if (!/^(0(\.\d+)?|1(\.0+)?)$/.test(raw)) {
        throw new Error(`${name} must be a number from 0 to 1, got ${JSON.stringify(raw)}`);
    }
    return Number(raw);
}

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/;
const DURATION_SHAPE = /^(\d+(\.\d+)?(ms|s|m|h))+$/;
/** @type {Record<string, number>} */
const UNIT_MS = { ms: 1, s: 1000, m: 60000, h: 3600000 };

/**
 * A k6 duration such as `30s`, `1m30s` or `500ms`.
 * @param {string} name
 * @param {string} fallback
 * @returns {string}
 */
export function envDuration(name, fallback) {
    const raw = envString(name, fallback);
    if (!DURATION_SHAPE.test(raw)) {
        throw new Error(`${name} must be a k6 duration like 30s or 1m30s, got ${JSON.stringify(raw)}`);
    }
    return raw;
}

/**
 * @param {string} duration  a value accepted by envDuration
 * @returns {number}
 */
export function durationMs(duration) {
    const part = new RegExp(DURATION_PART.source, 'g');
    let total = 0;
    for (let m = part.exec(duration); m !== null; m = part.exec(duration)) {
        total += Number(m[1]) * (UNIT_MS[m[2] ?? 's'] ?? 1000);
    }
    return total;
}

export const BASE_URL = envString('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
// The internal API's root. A deployment serves /internal/ on a listener of its own
// (SESSIONGATE_INTERNAL_LISTEN, the Service `sessiongate-internal`), which the ingress does
// not route; a local gateway without one serves it next to the public API.
export const INTERNAL_URL = envString('INTERNAL_URL', BASE_URL).replace(/\/+$/, '');
export const SERVICE_TOKEN = envString('SERVICE_TOKEN', '');
export const COOKIE_NAME = envString('COOKIE_NAME', 'concept_session');
export const DURATION = envDuration('DURATION', '1m');
export const RAMP = envDuration('RAMP', '30s');
export const SETUP_TIMEOUT = envDuration('SETUP_TIMEOUT', '5m');
export const REQUEST_TIMEOUT = envDuration('REQUEST_TIMEOUT', '10s');
export const P95_MS = envInt('P95_MS', 50, 1);
export const P99_MS = envInt('P99_MS', 250, 1);
export const ERROR_RATE = envFraction('ERROR_RATE', 0.01);
// Iterations k6 could not start for want of a free VU: the target rate was not offered.
export const MAX_DROPPED = envInt('MAX_DROPPED', 0);
// Only useful when the gateway lists this k6 host in `http.trusted_proxies`: spreads
// session creations over many client IPs so the per-IP creation throttle does not apply.
const SPREAD_CLIENT_IPS = envString('SPREAD_CLIENT_IPS', '') !== '';

/** Stops the test at once when the internal API's token is missing. */
export function requireServiceToken() {
    if (SERVICE_TOKEN === '') {
        throw new Error('SERVICE_TOKEN must be set to the gateway\'s SESSIONGATE_SERVICE_TOKEN');
    }
}

/**
 * A URL of the public API.
 * @param {string} path  starting with `/api/`
 * @returns {string}
 */
export function url(path) {
    return BASE_URL + path;
}

/**
 * A URL of the internal API.
 * @param {string} path  starting with `/internal/`
 * @returns {string}
 */
export function internalUrl(path) {
    return INTERNAL_URL + path;
}

// ---------------------------------------------------------------------------------------
// Requests

/** One failed validation per request; thresholds keep it under ERROR_RATE. */
export const errors = new Rate('errors');

/** Consumes answer 429 once a quota is spent: that is an answer, not a failure. */
export const GRANTED_OR_REFUSED = http.expectedStatuses(200, 429);

/**
 * @typedef {object} RequestOptions
 * @property {string} step  the `step` tag: per-step thresholds select on it
 * @property {CookieJar} [jar]  defaults to a fresh jar, so no cookie leaks between requests
 * @property {string} [sessionId]  sent as `X-Session-Id` (non-browser clients)
 * @property {string} [cookie]  sent as the session cookie (COOKIE_NAME) with this value, by
 *     the request itself: a jar withholds a `Secure` cookie (production) over plain http
 * @property {boolean} [json]  the body is JSON
 * @property {boolean} [service]  sends the internal API's bearer token
 * @property {string} [name]  URL template for the `name` tag (keeps ids out of tag values)
 * @property {boolean} [quotaAnswer]  200 and 429 both count as expected responses
 */

/**
 * @param {RequestOptions} options
 * @returns {Params}
 */
export function params(options) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (options.json) headers['Content-Type'] = 'application/json';
    if (options.sessionId !== undefined) headers['X-Session-Id'] = options.sessionId;
    if (options.service) headers['Authorization'] = `Bearer ${SERVICE_TOKEN}`;
    if (SPREAD_CLIENT_IPS) headers['X-Forwarded-For'] = randomClientIp();
    /** @type {Record<string, string>} */
    const tags = { step: options.step };
    if (options.name !== undefined) tags['name'] = options.name;
    /** @type {Params} */
    const result = {
        headers,
        tags,
        jar: options.jar ?? new http.CookieJar(),
        timeout: REQUEST_TIMEOUT,
    };
    if (options.cookie !== undefined) result.cookies = { [COOKIE_NAME]: { value: options.cookie, replace: true } };
    if (options.quotaAnswer) result.responseCallback = GRANTED_OR_REFUSED;
    return result;
}

function randomClientIp() {
    const octet = () => Math.floor(Math.random() * 256);
    return `10.${octet()}.${octet()}.${1 + Math.floor(Math.random() * 254)}`;
}

/**
 * A random key, unique across VUs and k6 instances (idempotency keys).
 * @param {string} prefix
 * @returns {string}
 */
export function randomKey(prefix) {
    const bytes = new Uint8Array(randomBytes(12));
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------------------------------------------
// JSON

/**
 * @param {unknown} value
 * @returns {value is JSONObject}
 */
export function isObject(value) {
    return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The response body as a JSON object, or null when it is not one (never throws).
 * @param {Response} res
 * @returns {JSONObject | null}
 */
export function parseObject(res) {
    if (typeof res.body !== 'string') return null;
    try {
        /** @type {unknown} */
        const value = JSON.parse(res.body);
        return isObject(value) ? value : null;
    } catch {
        return null;
    }
}

/**
 * @param {JSONValue} value
 * @returns {string}
 */
export function jsonBody(value) {
    return JSON.stringify(value);
}

/**
 * JSON text with object keys sorted, to compare values whatever their key order.
 * @param {JSONValue | undefined} value
 * @returns {string}
 */
export function canonicalJson(value) {
    if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
    if (isObject(value)) {
        const keys = Object.keys(value).sort();
        return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k])}`).join(',')}}`;
    }
    return value === undefined ? 'undefined' : JSON.stringify(value);
}

/**
 * A response header, whatever the case k6 gives its name.
 * @param {Response} res
 * @param {string} name
 * @returns {string | undefined}
 */
export function header(res, name) {
    const wanted = name.toLowerCase();
    for (const key of Object.keys(res.headers)) {
        if (key.toLowerCase() === wanted) return res.headers[key];
    }
    return undefined;
}

// ---------------------------------------------------------------------------------------
// Contract values

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i;
const RFC3339_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/** The three usage counters every session body carries. */
export const COUNTERS = /** @type {const} */ (['concepts_generated', 'concepts_refined', 'concepts_stored']);

/**
 * @param {JSONValue | undefined} value
 * @returns {value is string}
 */
export function isUuid(value) {
    return typeof value === 'string' && UUID.test(value);
}

/**
 * @param {JSONValue | undefined} value
 * @returns {value is string}
 */
export function isTimestamp(value) {
    return typeof value === 'string' && RFC3339_UTC.test(value) && !Number.isNaN(Date.parse(value));
}

/**
 * @param {JSONValue | undefined} value
 * @returns {value is number}
 */
export function isCount(value) {
    return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

/**
 * @param {JSONValue | undefined} value
 * @returns {value is JSONObject}
 */
export function isUsageStats(value) {
    return isObject(value) && COUNTERS.every((counter) => isCount(value[counter]));
}

/**
 * `{"<operation>": {limit, remaining, reset_at}}` with remaining <= limit.
 * @param {JSONValue | undefined} value
 * @returns {boolean}
 */
export function isRateLimits(value) {
    if (!isObject(value)) return false;
    return Object.values(value).every(
        (entry) =>
            isObject(entry) &&
            isCount(entry.limit) &&
            isCount(entry.remaining) &&
            entry.remaining <= entry.limit &&
            isTimestamp(entry.reset_at),
    );
}

/**
 * @param {JSONValue | undefined} a
 * @param {JSONValue | undefined} b
 * @returns {boolean}
 */
export function sameId(a, b) {
    return typeof a === 'string' && typeof b === 'string' && a.toLowerCase() === b.toLowerCase();
}

// ---------------------------------------------------------------------------------------
// Checks. Each returns the parsed body when every check passed, else null, and records
// one sample in `errors` unless `record` is false (setup's retries are not load).

/**
 * @typedef {object} SessionExpectation
 * @property {string} step
 * @property {string} [id]  the session the answer must be about
 * @property {boolean} [isNew]  expected `is_new_session` (create answers)
 * @property {boolean} [rateLimits]  the body must carry `rate_limits` (info answers)
 * @property {boolean} [record]  record the outcome in `errors` (default true)
 */

/**
 * A session body: `session_id`, `created_at`, `last_active`, `usage_stats`.
 * @param {Response} res
 * @param {SessionExpectation} expect
 * @param {BodyCheckers} [extra]  further checks of the same request
 * @returns {JSONObject | null}
 */
export function checkSession(res, expect, extra = {}) {
    const s = expect.step;
    /** @type {BodyCheckers} */
    const checks = {
        [`${s}: status 200`]: () => res.status === 200,
        [`${s}: session_id is a UUID`]: (b) => b !== null && isUuid(b.session_id),
        [`${s}: created_at is RFC 3339 UTC with Z`]: (b) => b !== null && isTimestamp(b.created_at),
        [`${s}: last_active is RFC 3339 UTC with Z, not before created_at`]: (b) =>
            b !== null &&
            isTimestamp(b.created_at) &&
            isTimestamp(b.last_active) &&
            Date.parse(b.last_active) >= Date.parse(b.created_at),
        [`${s}: usage_stats has the three counters`]: (b) => b !== null && isUsageStats(b.usage_stats),
    };
    const id = expect.id;
    if (id !== undefined) {
        checks[`${s}: session_id is the session asked for`] = (b) => b !== null && sameId(b.session_id, id);
    }
    const isNew = expect.isNew;
    if (isNew !== undefined) {
        checks[`${s}: is_new_session is ${isNew}`] = (b) => b !== null && b.is_new_session === isNew;
    }
    if (isNew === true) {
        checks[`${s}: a new session is server-generated (UUID v4) with zero usage`] = (b) =>
            b !== null &&
            typeof b.session_id === 'string' &&
            UUID_V4.test(b.session_id) &&
            isUsageStats(b.usage_stats) &&
            COUNTERS.every((counter) => isObject(b.usage_stats) && b.usage_stats[counter] === 0);
    }
    if (expect.rateLimits) {
        checks[`${s}: rate_limits entries are {limit, remaining <= limit, reset_at}`] = (b) =>
            b !== null && isRateLimits(b.rate_limits);
    }
    return finish(parseObject(res), { ...checks, ...extra }, s, expect.record !== false);
}

/**
 * @typedef {object} ErrorExpectation
 * @property {string} step
 * @property {number} status
 * @property {string} code  expected `error_code`
 * @property {boolean} [record]
 */

/**
 * An error body: `{"error": true, "error_code", "detail", "status_code"}`.
 * @param {Response} res
 * @param {ErrorExpectation} expect
 * @param {BodyCheckers} [extra]
 * @returns {JSONObject | null}
 */
export function checkError(res, expect, extra = {}) {
    const s = expect.step;
    /** @type {BodyCheckers} */
    const checks = {
        [`${s}: status ${expect.status}`]: () => res.status === expect.status,
        [`${s}: error is true`]: (b) => b !== null && b.error === true,
        [`${s}: error_code is ${expect.code}`]: (b) => b !== null && b.error_code === expect.code,
        [`${s}: detail is a non-empty string`]: (b) =>
            b !== null && typeof b.detail === 'string' && b.detail.length > 0,
        [`${s}: status_code matches the status`]: (b) => b !== null && b.status_code === res.status,
    };
    if (expect.status === 429 || expect.status === 503) {
        checks[`${s}: Retry-After is a positive number of seconds`] = () =>
            /^[1-9]\d*$/.test(header(res, 'Retry-After') ?? '');
    }
    return finish(parseObject(res), { ...checks, ...extra }, s, expect.record !== false);
}

/**
 * @param {JSONObject | null} body
 * @param {BodyCheckers} checks
 * @param {string} step
 * @param {boolean} record
 * @returns {JSONObject | null}
 */
function finish(body, checks, step, record) {
    const tags = { step };
    const ok = check(body, checks, tags);
    if (record) errors.add(!ok, tags);
    return ok ? body : null;
}

/**
 * A consume answer for `operation`: a grant (200, `allowed: true`) or a refusal (429 with
 * the error shape, `allowed: false`, `remaining: 0`, `reset_at`, Retry-After and the
 * RateLimit headers). Any other status fails.
 * @param {Response} res
 * @param {string} step
 * @param {string} operation
 * @returns {JSONObject | null}
 */
export function checkQuotaAnswer(res, step, operation) {
    if (res.status === 429) {
        return checkError(res, { step, status: 429, code: 'rate_limit_exceeded' }, {
            [`${step}: refusal has allowed false, remaining 0, reset_at`]: (b) =>
                b !== null && b.allowed === false && b.remaining === 0 && isCount(b.limit) && isTimestamp(b.reset_at),
            [`${step}: refusal has RateLimit and RateLimit-Policy headers`]: (b) =>
                b !== null &&
                (header(res, 'RateLimit') ?? '').startsWith(`"${operation}";r=0;t=`) &&
                (header(res, 'RateLimit-Policy') ?? '').startsWith(`"${operation}";q=${b.limit};w=`),
        });
    }
    return finish(
        parseObject(res),
        {
            [`${step}: status 200 or 429`]: () => res.status === 200,
            [`${step}: grant has allowed true, remaining < limit, reset_at`]: (b) =>
                b !== null &&
                b.allowed === true &&
                isCount(b.limit) &&
                isCount(b.remaining) &&
                b.remaining < b.limit &&
                isTimestamp(b.reset_at),
            [`${step}: grant carries usage_stats`]: (b) => b !== null && isUsageStats(b.usage_stats),
        },
        step,
        true,
    );
}

// ---------------------------------------------------------------------------------------
// Thresholds

/**
 * Thresholds for one scenario and its steps: p95/p99 latency overall and per step, failed
 * requests and failed checks under ERROR_RATE, the arrival rate really offered, and at
 * least one request per step (so a step that never ran cannot pass its latency
 * thresholds vacuously).
 * @param {string} scenario
 * @param {readonly string[]} steps
 * @returns {Record<string, Threshold[]>}
 */
export function thresholds(scenario, steps) {
    const latency = [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
    /** @type {Record<string, Threshold[]>} */
    const result = {
        [`http_req_duration{scenario:${scenario}}`]: latency,
        [`http_req_failed{scenario:${scenario}}`]: [`rate<${ERROR_RATE}`],
        errors: [`rate<${ERROR_RATE}`],
        [`dropped_iterations{scenario:${scenario}}`]: [`count<=${MAX_DROPPED}`],
    };
    for (const step of steps) {
        result[`http_req_duration{step:${step}}`] = latency;
        result[`http_reqs{step:${step}}`] = ['count>0'];
    }
    return result;
}

/**
 * VUs for an arrival-rate executor: enough for `rate` iterations/s at ~100 ms each, and
 * room to grow when the gateway slows down (k6 reports `dropped_iterations` past that).
 * @param {number} rate
 * @returns {{preAllocatedVUs: number, maxVUs: number}}
 */
export function vusFor(rate) {
    const preAllocatedVUs = envInt('VUS', Math.max(10, Math.ceil(rate / 10)), 1);
    const maxVUs = envInt('MAX_VUS', preAllocatedVUs * 10, preAllocatedVUs);
    return { preAllocatedVUs, maxVUs };
}

// ---------------------------------------------------------------------------------------
// Setup

/**
 * Creates `count` new sessions for setup(), `batch` at a time, waiting out 429/503 answers
 * (creation throttle, write-behind backpressure) as Retry-After says. Aborts the test when
 * an answer is wrong or the sessions cannot be had before SETUP_TIMEOUT.
 * @param {number} count
 * @param {number} batch
 * @returns {string[]}
 */
export function createSessions(count, batch) {
    const deadline = Date.now() + durationMs(SETUP_TIMEOUT) - 5000;
    /** @type {Set<string>} */
    const ids = new Set();
    while (ids.size < count) {
        const size = Math.min(batch, count - ids.size);
        /** @type {import('k6/http').ObjectBatchRequest[]} */
        const requests = [];
        for (let i = 0; i < size; i++) {
            requests.push({ method: 'POST', url: url('/api/session/'), body: null, params: params({ step: 'setup' }) });
        }
        let wait = 0;
        for (const res of http.batch(requests)) {
            if (res.status === 429 || res.status === 503) {
                wait = Math.max(wait, Math.min(60, Number(header(res, 'Retry-After') ?? '1') || 1));
                continue;
            }
            const body = checkSession(res, { step: 'setup', isNew: true, record: false });
            if (body === null || typeof body.session_id !== 'string') {
                exec.test.abort(`setup: session creation answered ${res.status}: ${String(res.body).slice(0, 200)}`);
                return [];
            }
            if (ids.has(body.session_id)) {
                exec.test.abort(`setup: the gateway handed out session ${body.session_id} twice`);
                return [];
            }
            ids.add(body.session_id);
        }
        if (wait > 0) {
            if (Date.now() + wait * 1000 > deadline) {
                exec.test.abort(
                    `setup: only ${ids.size} of ${count} sessions before SETUP_TIMEOUT; raise the gateway's ` +
                        'session.creations_per_minute / creation_burst, SETUP_TIMEOUT, or lower SESSIONS',
                );
                return [];
            }
            sleep(wait);
        }
    }
    return Array.from(ids);
}
