"""Opens N keep-alive connections to the gateway, one request answered on each, and reports
the gateway's resident memory before and while they are all open and idle (load-tests/bench)."""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS for the gateway")


def main():
    host, port, pid, count, session = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    before = rss_kib(pid)
    request = (f"GET /api/session/info HTTP/1.1\r\nHost: {host}\r\nX-Session-Id: {session}\r\n\r\n").encode()
    # One request at a time, each answered before the next connection opens: the connections
    # are idle keep-alive ones, not 10,000 requests in flight at once.
    sockets = []
    answered = 0
    for _ in range(count):
        s = socket.create_connection((host, port))
        s.settimeout(30)
        s.sendall(request)
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            answered += 1
        sockets.append(s)
    # Idle now: the gateway parks a connection (drops its HTTP buffers) once its answer is
    # written; give its allocator a moment to return what it freed.
    time.sleep(2)
    during = rss_kib(pid)
    for s in sockets:
        s.close()
    print(f"{count} {answered} {before} {during}")


main()
