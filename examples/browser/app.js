// How a frontend uses sessiongate: plain fetch() calls with `credentials: 'include'`.
//
// - The session lives in a cookie the gateway sets (`concept_session`, HttpOnly, SameSite=Lax,
//   30 days, renewed by every answer). Scripts never see it: the browser stores it and sends
//   it back; the page only ever reads `session_id` from the JSON answers.
// - When the page and the gateway are on different origins (as here, e.g. the page on
//   http://127.0.0.1:3000 and the API on http://127.0.0.1:8080), the gateway must list the
//   page's origin exactly in `[cors] allowed_origins`; otherwise the browser keeps every
//   answer from the page (and the gateway refuses its state-changing requests).
// - Every body is JSON and says so (`Content-Type: application/json`); that makes the browser
//   ask the gateway first (a CORS preflight), and the gateway refuses bodies without it.
//
// The API's base URL comes from `?api=http://host:port`; by default the page's own origin
// (page and API behind one ingress: then CORS is not needed at all).
const API = new URLSearchParams(location.search).get('api') || location.origin;

// One call: resolves to {status, body} (body: the parsed JSON answer, or its text), rejects
// when the browser withholds the answer (network error, or CORS refused this origin).
async function call(method, path, json) {
  const init = { method, credentials: 'include' };
  if (json !== undefined) {
    init.headers = { 'Content-Type': 'application/json' };
    init.body = JSON.stringify(json);
  }
  const response = await fetch(API + path, init);
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (an empty answer): keep the text.
  }
  return { status: response.status, body };
}

window.sessiongate = {
  api: API,
  // The current session, or a new one (and its cookie) when the browser has none.
  create: () => call('POST', '/api/session/', {}),
  // The current session's usage and quotas; 404 when there is none.
  info: () => call('GET', '/api/session/info'),
  // Preferences: one JSON object per session (at most 4 KiB, 32 keys, depth 4).
  getPreferences: () => call('GET', '/api/session/preferences'),
  putPreferences: (preferences) => call('PUT', '/api/session/preferences', preferences),
  // Adopt a session id the user kept (e.g. copied from another device): is_synced tells
  // whether it existed; an unknown id changes nothing.
  sync: (id) => call('POST', '/api/session/sync', { client_session_id: id }),
};

// The demo's buttons: each prints what the gateway answered.
const output = document.getElementById('output');
function show(promise) {
  promise.then(
    (result) => { output.textContent = JSON.stringify(result, null, 2); },
    (error) => { output.textContent = `refused by the browser: ${error}`; },
  );
}
document.getElementById('api').textContent = API;
document.getElementById('create').onclick = () => show(sessiongate.create());
document.getElementById('info').onclick = () => show(sessiongate.info());
document.getElementById('save').onclick = () => {
  let preferences;
  try {
    preferences = JSON.parse(document.getElementById('preferences').value);
  } catch (error) {
    output.textContent = `not JSON: ${error}`;
    return;
  }
  show(sessiongate.putPreferences(preferences));
};
document.getElementById('load').onclick = () => show(sessiongate.getPreferences());
document.getElementById('sync').onclick = () =>
  show(sessiongate.sync(document.getElementById('session-id').value.trim()));
