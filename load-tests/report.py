"""Parses the wrk runs of load-tests/bench and prints the table and the summary line."""
import json
import re
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(path):
    text = open(path[:-len(".txt")] + ".cpu").read().split()
    server_cpu, redis_cpu = float(text[0]), float(text[1])
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    pct = {}
    for p, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        pct[p] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "requests": requests, "p50": pct.get("50"), "p99": pct.get("99"),
            "non2xx": int(errors.group(1)) if errors else 0,
            "server_us": server_cpu * 1e6 / max(requests, 1), "redis_us": redis_cpu * 1e6 / max(requests, 1)}


def main():
    results = json.load(open(sys.argv[1]))
    runs = {name: parse(path) for name, path in results["runs"].items()}
    hello = runs["hello"]["rps"]
    # Each step's ceiling is the probe run right before it (the same moment of the machine).
    ceilings = {step: (c["probe"], parse(c["run"])) for step, c in results["ceilings"].items()}
    print(f"{'run':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'cpu µs':>8}{'redis µs':>9}"
          f"{'/hello':>8}{'/ceiling':>16}{'ceiling':>9}{'cpu x':>7}{'rt/req':>8}{'cmds/req':>10}")
    ratios = {}
    for name, run in runs.items():
        line = (f"{name:<16}{run['rps']:>10.0f}{run['p50']:>9.2f}{run['p99']:>9.2f}{run['non2xx']:>9}"
                f"{run['server_us']:>8.1f}{run['redis_us']:>9.1f}{run['rps'] / hello:>8.2f}")
        if name in ceilings:
            base, probe = ceilings[name]
            ratios[name] = run["rps"] / probe["rps"]
            # CPU per request against the ceiling's: the gateway's own work per request.
            line += (f"{ratios[name]:>9.2f} {base:<6}{probe['rps']:>9.0f}"
                     f"{run['server_us'] / probe['server_us']:>7.2f}")
            stats = results["redis"].get(name)
            if stats:
                line += f"{stats['round_trips'] / run['requests']:>8.2f}{stats['commands'] / run['requests']:>10.2f}"
        print(line)
    memory = results["memory"]
    conns = results["connections"]
    print(f"redis memory per session: {memory['per_session']:.0f} B average over {memory['sessions']} sessions; "
          f"{memory['sample_with_quotas']} B for one with three quota windows (MEMORY USAGE)")
    print(f"gateway RSS: {conns['before_kib'] / 1024:.1f} MiB idle, {conns['during_kib'] / 1024:.1f} MiB with "
          f"{conns['answered']}/{conns['count']} keep-alive connections open")
    rt = {name: results["redis"][name]["round_trips"] / runs[name]["requests"] for name in ("info", "create", "consume")}
    print(f"summary: info/HGETALL {ratios['info']:.2f} (>=0.90), info cached/hello {ratios['info_cached']:.2f} (>=0.60), create/EVALSHA {ratios['create']:.2f} (>=0.85), "
          f"consume/EVALSHA {ratios['consume']:.2f} (>=0.85), round trips/req {rt['info']:.2f}/{rt['create']:.2f}/{rt['consume']:.2f}, "
          f"{memory['sample_with_quotas']} B/session with quotas (<=300), RSS {conns['during_kib'] / 1024:.0f} MiB at {conns['count']} conns (<=64), "
          f"gateway mode/plain proxy {ratios['proxy_plain']:.2f} unmetered, {ratios['proxy_metered']:.2f} metered (>=0.60), "
          f"consume on a plan/no plan {runs['consume_plan']['rps'] / runs['consume_no_plan']['rps']:.2f}")


main()
