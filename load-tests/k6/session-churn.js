// Browser churn: each iteration is a new visitor. Browser A creates a session (its cookie
// jar receives the cookie); browser B, on another device with an empty jar, adopts the id
// with sync and reads /info with the cookie the sync set. That cookie is sent by the request
// itself rather than through the jar, which keeps a `Secure` cookie (production) for https
// only: the script runs against an http URL too (a port-forward, an in-cluster Service).
import http from 'k6/http';
import {
    COOKIE_NAME,
    DURATION,
    checkSession,
    envInt,
    isObject,
    jsonBody,
    params,
    parseObject,
    sameId,
    thresholds,
    url,
    vusFor,
    errors,
} from './lib.js';
import { check } from 'k6';

const SCENARIO = 'session_churn';
const STEPS = /** @type {const} */ (['create', 'sync', 'info']);
// Default stays under the gateway's default creation throttle (600/min per client IP).
const RATE = envInt('RATE', 8, 1);

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
    thresholds: thresholds(SCENARIO, STEPS),
};

export default function () {
    const browserA = new http.CookieJar();
    const created = http.post(url('/api/session/'), null, params({ step: 'create', jar: browserA }));
    const session = checkSession(
        created,
        { step: 'create', isNew: true },
        {
            'create: sets the session cookie to the new id': (b) =>
                b !== null && (created.cookies[COOKIE_NAME] ?? []).some((c) => sameId(c.value, b.session_id)),
        },
    );
    if (session === null || typeof session.session_id !== 'string') return;
    const id = session.session_id;

    const browserB = new http.CookieJar();
    const synced = http.post(
        url('/api/session/sync'),
        jsonBody({ client_session_id: id }),
        params({ step: 'sync', jar: browserB, json: true }),
    );
    const syncBody = parseObject(synced);
    const syncOk = check(
        syncBody,
        {
            'sync: status 200': () => synced.status === 200,
            'sync: session_id is the adopted id': (b) => b !== null && sameId(b.session_id, id),
            'sync: is_synced is true': (b) => b !== null && b.is_synced === true,
            'sync: message says synchronized': (b) =>
                b !== null && b.message === 'Sessions synchronized successfully',
            'sync: sets the session cookie to the adopted id': () =>
                (synced.cookies[COOKIE_NAME] ?? []).some((c) => sameId(c.value, id)),
        },
        { step: 'sync' },
    );
    errors.add(!syncOk, { step: 'sync' });
    if (!syncOk) return;

    // No X-Session-Id: only the cookie the sync set names the session.
    const cookie = (synced.cookies[COOKIE_NAME] ?? []).find((c) => sameId(c.value, id));
    const info = http.get(url('/api/session/info'), params({ step: 'info', cookie: cookie?.value ?? id }));
    checkSession(
        info,
        { step: 'info', id, rateLimits: true },
        {
            'info: usage of the new session is still zero': (b) =>
                b !== null &&
                isObject(b.usage_stats) &&
                Object.values(b.usage_stats).every((count) => count === 0),
        },
    );
}
