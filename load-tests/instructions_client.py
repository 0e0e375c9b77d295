"""One keep-alive client for load-tests/instructions: makes exactly N requests of one kind,
one after another, and fails on any answer but 2xx (a refused request costs less and would
flatter the count).

usage: instructions_client.py <port> <kind> <n> [token] [ids file]
kinds: get (GET /, the probes), create, info, consume, plain and metered (gateway mode)
"""
import http.client
import sys


def main():
    port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    token = sys.argv[4] if len(sys.argv) > 4 else ""
    ids = open(sys.argv[5]).read().split() if len(sys.argv) > 5 else []
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(n):
        session = ids[i % len(ids)] if ids else ""
        if kind == "get":
            connection.request("GET", "/")
        elif kind == "create":
            connection.request("POST", "/api/session/", body=b"", headers={"Content-Length": "0"})
        elif kind == "info":
            connection.request("GET", "/api/session/info", headers={"X-Session-Id": session})
        elif kind == "consume":
            path = f"/internal/v1/sessions/{session}/quota/bench/consume"
            connection.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        elif kind == "plain":
            connection.request("GET", "/plain/x")
        elif kind == "metered":
            connection.request("POST", "/metered/x", body=b"",
                               headers={"Content-Length": "0", "X-Session-Id": session})
        else:
            sys.exit(f"instructions_client: unknown kind {kind}")
        response = connection.getresponse()
        response.read()
        if not 200 <= response.status < 300:
            sys.exit(f"instructions_client: {kind} answered {response.status}")


if __name__ == "__main__":
    main()
