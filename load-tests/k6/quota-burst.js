// Quota burst: each iteration creates a session, then consumes OPERATION in rounds of
// CONCURRENCY parallel requests until the gateway refuses. Under any concurrency a window
// must grant exactly its limit, each grant seeing a different `remaining`, and refuse
// the rest with a well-formed 429. Needs SERVICE_TOKEN (and INTERNAL_URL against a
// deployment); OPERATION must be a window policy (calendar or rolling): a token bucket
// refills during the burst and grants more.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import {
    COUNTERS,
    DURATION,
    checkQuotaAnswer,
    checkSession,
    envInt,
    envString,
    internalUrl,
    isObject,
    params,
    parseObject,
    requireServiceToken,
    thresholds,
    url,
    vusFor,
} from './lib.js';

requireServiceToken();

const SCENARIO = 'quota_burst';
const STEPS = /** @type {const} */ (['create', 'consume']);
const RATE = envInt('RATE', 5, 1);
const OPERATION = envString('OPERATION', 'concept_generation');
if (!/^[a-z0-9_-]+$/.test(OPERATION)) throw new Error(`OPERATION ${JSON.stringify(OPERATION)} is not an operation name`);
/** @type {Record<string, string>} */
const DEFAULT_COUNTER = {
    concept_generation: 'concepts_generated',
    concept_refinement: 'concepts_refined',
    concept_storage: 'concepts_stored',
};
// The usage counter a grant feeds; `none` when the policy has none.
const COUNTER = envString('COUNTER', DEFAULT_COUNTER[OPERATION] ?? 'none');
if (COUNTER !== 'none' && !COUNTERS.some((c) => c === COUNTER)) {
    throw new Error(`COUNTER must be one of ${COUNTERS.join(', ')} or none, got ${JSON.stringify(COUNTER)}`);
}
const CONCURRENCY = envInt('CONCURRENCY', 4, 1);
// Upper bound on consumes before the first grant reveals the limit.
const MAX_CONSUMES = envInt('MAX_CONSUMES', 1000, 1);
const CONSUME_NAME = `/internal/v1/sessions/{id}/quota/${OPERATION}/consume`;

const grants = new Counter('quota_grants');
const wrongAnswers = new Counter('quota_wrong_answers');

/** @type {import('k6/options').Options} */
export const options = {
    scenarios: {
        [SCENARIO]: {
            executor: 'constant-arrival-rate',
            rate: RATE,
            timeUnit: '1s',
            duration: DURATION,
            ...vusFor(RATE),
        },
    },
    thresholds: {
        ...thresholds(SCENARIO, STEPS),
        quota_wrong_answers: ['count==0'],
        quota_grants: ['count>0'],
    },
};

export default function () {
    const created = http.post(url('/api/session/'), null, params({ step: 'create' }));
    const session = checkSession(created, { step: 'create', isNew: true });
    if (session === null || typeof session.session_id !== 'string') return;
    const id = session.session_id;

    const consume = {
        method: 'POST',
        url: internalUrl(`/internal/v1/sessions/${id}/quota/${OPERATION}/consume`),
        body: null,
        params: params({ step: 'consume', service: true, name: CONSUME_NAME, quotaAnswer: true }),
    };
    /** @type {Set<number>} */
    const limits = new Set();
    /** @type {number[]} */
    const remainings = [];
    let granted = 0;
    let refused = 0;
    let unexpected = 0;
    let sent = 0;
    let lastUsage = -1;
    while (refused === 0 && unexpected === 0) {
        const known = limits.size > 0 ? Math.max(...limits) : MAX_CONSUMES;
        if (sent >= known + CONCURRENCY) break; // never refused: judged below
        /** @type {(typeof consume)[]} */
        const round = [];
        for (let i = 0; i < CONCURRENCY; i++) round.push(consume);
        sent += CONCURRENCY;
        for (const res of http.batch(round)) {
            if (res.status !== 200 && res.status !== 429) {
                checkQuotaAnswer(res, 'consume', OPERATION); // fails and records the error
                unexpected++;
                continue;
            }
            if (checkQuotaAnswer(res, 'consume', OPERATION) === null) {
                wrong(id, `${res.status} answer failed its checks: ${String(res.body).slice(0, 300)}`);
            }
            // Counted from the status, so a bad body cannot hide a grant.
            const body = parseObject(res) ?? {};
            if (typeof body.limit === 'number') limits.add(body.limit);
            if (res.status === 200) {
                granted++;
                if (typeof body.remaining === 'number') remainings.push(body.remaining);
            } else {
                refused++;
                const usage = isObject(body.usage_stats) ? body.usage_stats[COUNTER] : undefined;
                if (typeof usage === 'number') lastUsage = usage;
            }
        }
    }
    grants.add(granted);
    // A 503 or a timeout leaves unknown whether that consume was granted: no verdict.
    if (unexpected > 0) return;

    const limit = limits.size === 1 ? Math.max(...limits) : -1;
    const sorted = remainings.slice().sort((a, b) => a - b);
    const verdict = check(
        null,
        {
            'burst: every answer names the same limit': () => limits.size === 1,
            'burst: ended with a refusal': () => refused > 0,
            'burst: exactly limit consumes granted': () => granted === limit,
            'burst: each grant saw a different remaining, limit-1 down to 0': () =>
                sorted.length === limit && sorted.every((r, i) => r === i),
            [`burst: refusal reports usage ${COUNTER} = limit`]: () => COUNTER === 'none' || lastUsage === limit,
        },
        { step: 'consume' },
    );
    if (!verdict) {
        wrong(id, `limits ${JSON.stringify([...limits])}, granted ${granted}, refused ${refused}, ` +
            `remainings ${JSON.stringify(sorted)}, ${COUNTER} ${lastUsage}`);
    }
}

/**
 * @param {string} id
 * @param {string} what
 */
function wrong(id, what) {
    wrongAnswers.add(1);
    console.warn(`quota-burst: wrong answer for session ${id}: ${what}`);
}
