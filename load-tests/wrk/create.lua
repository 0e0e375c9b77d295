-- POST /api/session/ without a cookie: every request creates a session.
wrk.method = "POST"
