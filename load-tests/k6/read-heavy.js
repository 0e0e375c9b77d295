// Read-heavy: setup() creates SESSIONS sessions, then GET /api/session/info at a constant
// arrival rate, each read naming a random one of them with X-Session-Id.
import http from 'k6/http';
import exec from 'k6/execution';
import {
    DURATION,
    SETUP_TIMEOUT,
    checkSession,
    createSessions,
    envInt,
    params,
    thresholds,
    url,
    vusFor,
} from './lib.js';

const SCENARIO = 'read_heavy';
const STEPS = /** @type {const} */ (['info']);
const RATE = envInt('RATE', 500, 1);
const SESSIONS = envInt('SESSIONS', 1000, 1);
const SETUP_BATCH = envInt('SETUP_BATCH', 20, 1);

/** @type {import('k6/options').Options} */
export const options = {
    setupTimeout: SETUP_TIMEOUT,
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

/** @typedef {{ ids: string[] }} SetupData */

/** @returns {SetupData} */
export function setup() {
    return { ids: createSessions(SESSIONS, SETUP_BATCH) };
}

/** @param {SetupData} data */
export default function (data) {
    const id = data.ids[Math.floor(Math.random() * data.ids.length)];
    if (id === undefined) {
        exec.test.abort('setup() returned no sessions');
        return;
    }
    // A fresh cookie jar per request (params' default): the cookie the answer sets must not
    // be sent next time, because a cookie would win over X-Session-Id.
    const res = http.get(url('/api/session/info'), params({ step: 'info', sessionId: id }));
    checkSession(res, { step: 'info', id, rateLimits: true });
}
