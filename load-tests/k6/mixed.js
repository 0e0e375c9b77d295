// Mixed traffic at a target arrival rate: mostly info reads of existing sessions, some new
// sessions, backend consumes (some with idempotency keys, some of those replayed) and
// preference writes and reads. Consume refusals (429) are answers, not failures.
import http from 'k6/http';
import { check } from 'k6';
import {
    DURATION,
    RAMP,
    SETUP_TIMEOUT,
    COOKIE_NAME,
    canonicalJson,
    checkQuotaAnswer,
    checkSession,
    createSessions,
    envFraction,
    envInt,
    envString,
    errors,
    header,
    internalUrl,
    isObject,
    jsonBody,
    params,
    parseObject,
    randomKey,
    requireServiceToken,
    sameId,
    thresholds,
    url,
    vusFor,
} from './lib.js';

/** @typedef {import('k6').JSONValue} JSONValue */
/** @typedef {'info' | 'create' | 'consume' | 'prefs'} Action */

const SCENARIO = 'mixed';
const RATE = envInt('RATE', 200, 1);
const SESSIONS = envInt('SESSIONS', 1000, 1);
const SETUP_BATCH = envInt('SETUP_BATCH', 20, 1);
const OPERATION = envString('OPERATION', 'concept_generation');
// Share of consumes that carry an idempotency key; half of those repeat the VU's previous key.
const KEYED = envFraction('KEYED', 0.3);
const CONSUME_NAME = `/internal/v1/sessions/{id}/quota/${OPERATION}/consume`;

/** @type {readonly Action[]} */
const ACTIONS = ['info', 'create', 'consume', 'prefs'];
const MIX = parseMix(envString('MIX', 'info=70,create=15,consume=10,prefs=5'));
if (MIX.consume > 0) requireServiceToken();
const TOTAL_WEIGHT = ACTIONS.reduce((sum, a) => sum + MIX[a], 0);

/** Steps (tags) that will carry traffic: each gets its own latency thresholds. */
const STEPS = ACTIONS.filter((a) => MIX[a] > 0).flatMap((a) => (a === 'prefs' ? ['prefs_put', 'prefs_get'] : [a]));

/** @type {import('k6/options').Options} */
export const options = {
    setupTimeout: SETUP_TIMEOUT,
    scenarios: {
        [SCENARIO]: {
            executor: 'ramping-arrival-rate',
            startRate: Math.max(1, Math.floor(RATE / 10)),
            timeUnit: '1s',
            stages: [
                { target: RATE, duration: RAMP },
                { target: RATE, duration: DURATION },
            ],
            ...vusFor(RATE),
        },
    },
    thresholds: thresholds(SCENARIO, STEPS),
};

/**
 * `info=70,create=15,...`: whole-number weights; unnamed actions get 0.
 * @param {string} text
 * @returns {Record<Action, number>}
 */
function parseMix(text) {
    /** @type {Record<Action, number>} */
    const mix = { info: 0, create: 0, consume: 0, prefs: 0 };
    for (const part of text.split(',')) {
        const match = /^\s*([a-z]+)\s*=\s*(\d+)\s*$/.exec(part);
        const action = ACTIONS.find((a) => a === match?.[1]);
        if (match === null || action === undefined) {
            throw new Error(`MIX must look like info=70,create=15,consume=10,prefs=5; bad part ${JSON.stringify(part)}`);
        }
        mix[action] = Number(match[2]);
    }
    if (ACTIONS.every((a) => mix[a] === 0)) throw new Error('MIX gives every action weight 0');
    return mix;
}

/** @returns {Action} */
function pickAction() {
    let roll = Math.random() * TOTAL_WEIGHT;
    for (const action of ACTIONS) {
        roll -= MIX[action];
        if (roll < 0) return action;
    }
    return 'info';
}

/** @typedef {{ ids: string[] }} SetupData */

/** @returns {SetupData} */
export function setup() {
    return { ids: createSessions(SESSIONS, SETUP_BATCH) };
}

/** @param {SetupData} data */
export default function (data) {
    const id = data.ids[Math.floor(Math.random() * data.ids.length)] ?? '';
    switch (pickAction()) {
        case 'info':
            info(id);
            break;
        case 'create':
            create();
            break;
        case 'consume':
            consume(id);
            break;
        case 'prefs':
            if (Math.random() < 0.5) putPreferences(id);
            else getPreferences(id);
            break;
    }
}

/** @param {string} id */
function info(id) {
    const res = http.get(url('/api/session/info'), params({ step: 'info', sessionId: id }));
    checkSession(res, { step: 'info', id, rateLimits: true });
}

function create() {
    const res = http.post(url('/api/session/'), null, params({ step: 'create' }));
    checkSession(
        res,
        { step: 'create', isNew: true },
        {
            'create: sets the session cookie to the new id': (b) =>
                b !== null && (res.cookies[COOKIE_NAME] ?? []).some((c) => sameId(c.value, b.session_id)),
        },
    );
}

/**
 * The VU's previous keyed consume, repeated to check the replay.
 * @type {{ id: string, key: string, at: number, status: number, remaining: JSONValue | undefined, resetAt: JSONValue | undefined } | null}
 */
let lastKeyed = null;

/** @param {string} id */
function consume(id) {
    const p = params({ step: 'consume', service: true, name: CONSUME_NAME, quotaAnswer: true });
    const keyed = Math.random() < KEYED;
    // Keys are kept at least 60 s; replay only well within that.
    const replay = keyed && lastKeyed !== null && Date.now() - lastKeyed.at < 30000 && Math.random() < 0.5 ? lastKeyed : null;
    const target = replay?.id ?? id;
    const key = replay?.key ?? (keyed ? randomKey('k6-') : undefined);
    const res = http.post(
        internalUrl(`/internal/v1/sessions/${target}/quota/${OPERATION}/consume`),
        key === undefined ? null : jsonBody({ idempotency_key: key }),
        key === undefined ? p : { ...p, headers: { ...p.headers, 'Content-Type': 'application/json' } },
    );
    const body = checkQuotaAnswer(res, 'consume', OPERATION);
    const replayed = header(res, 'Idempotent-Replayed');
    if (replay !== null) {
        const ok = check(
            body,
            {
                'consume: a repeated key is answered as a replay': () => replayed === 'true',
                'consume: a replay repeats the first answer': (b) =>
                    b !== null &&
                    res.status === replay.status &&
                    b.remaining === replay.remaining &&
                    b.reset_at === replay.resetAt,
            },
            { step: 'consume' },
        );
        errors.add(!ok, { step: 'consume' });
    } else {
        const ok = check(res, { 'consume: a new request is not a replay': () => replayed === undefined }, { step: 'consume' });
        errors.add(!ok, { step: 'consume' });
        if (key !== undefined && body !== null) {
            lastKeyed = { id: target, key, at: Date.now(), status: res.status, remaining: body.remaining, resetAt: body.reset_at };
        }
    }
}

/** @param {string} id */
function putPreferences(id) {
    /** @type {JSONValue} */
    const preferences = {
        theme: Math.random() < 0.5 ? 'dark' : 'light',
        k6: { vu: __VU, iter: __ITER },
    };
    const res = http.put(
        url('/api/session/preferences'),
        jsonBody(preferences),
        params({ step: 'prefs_put', sessionId: id, json: true }),
    );
    const ok = check(
        parseObject(res),
        {
            'prefs_put: status 200': () => res.status === 200,
            'prefs_put: returns the object written': (b) =>
                b !== null && canonicalJson(b) === canonicalJson(preferences),
        },
        { step: 'prefs_put' },
    );
    errors.add(!ok, { step: 'prefs_put' });
}

/** @param {string} id */
function getPreferences(id) {
    const res = http.get(url('/api/session/preferences'), params({ step: 'prefs_get', sessionId: id }));
    // Other VUs write the same sessions' preferences, so only the shape can be checked.
    const ok = check(
        parseObject(res),
        {
            'prefs_get: status 200': () => res.status === 200,
            'prefs_get: body is a JSON object of at most 32 keys': (b) =>
                b !== null && isObject(b) && Object.keys(b).length <= 32,
        },
        { step: 'prefs_get' },
    );
    errors.add(!ok, { step: 'prefs_get' });
}
