"""Parses the runs of load-tests/scale (its work directory, argv[1]) and prints its two tables
and the summary line."""
import os
import re
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(path):
    """req/s, p50/p99 in ms, run length in s and wrong answers of one wrk --latency run."""
    text = open(path).read()
    pct = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    seconds = re.search(r"requests in ([\d.]+)(us|ms|s|m)", text)
    length = float(seconds.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60}[seconds.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": pct.get("50", float("nan")), "p99": pct.get("99", float("nan")), "seconds": length,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0),
    }


def count(n):
    return f"{n // 1000000}M" if n >= 1000000 and n % 1000000 == 0 else f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def lines(path):
    return [line.split() for line in open(path) if line.strip()]


def cpu(work, name, seconds):
    """CPU of one run as % of one core: Redis, each gateway, wrk, and others (everything else
    the machine ran meanwhile: another build, say), from the two snapshots in <name>.cpu."""
    before, after = ([float(v) for v in line.split()] for line in open(os.path.join(work, name + ".cpu")))
    delta = [(a - b) * 100 / seconds for a, b in zip(after, before)]
    machine, redis, gateways, wrk = delta[0], delta[1], delta[2:-1], delta[-1]
    return {"redis": redis, "gateways": gateways, "wrk": wrk, "others": machine - redis - sum(gateways) - wrk}


def main():
    work = sys.argv[1]
    run = lambda name: parse(os.path.join(work, name + ".txt"))
    writes = lambda name: int(open(os.path.join(work, name + ".writes")).read())
    touched, others = 0, 0.0

    print(f"{'sessions':>8}{'used_memory':>12}{'B/sess':>7}{'fill s':>7} |{'info req/s':>11}{'p50':>6}{'p99 ms':>7}"
          f"{'µs redis/gw':>13} |{'consume req/s':>14}{'p50':>6}{'p99 ms':>7}{'µs redis/gw':>13} |"
          f"{'touch':>6}{'errors':>7}{'others %':>9}")
    curve = []
    for size, before, after, seconds in lines(os.path.join(work, "sizes")):
        size, before, after = int(size), int(before), int(after)
        runs = {step: run(f"{step}-{size}") for step in ("info", "consume")}
        use = {step: cpu(work, f"{step}-{size}", r["seconds"]) for step, r in runs.items()}
        per_session = (after - before) / size
        curve.append((size, per_session, runs["info"], runs["consume"]))
        touches = writes(f"info-{size}")
        touched += touches
        busy = max(u["others"] for u in use.values())
        others = max(others, busy)
        line = f"{count(size):>8}{after / 2**20:>8.1f} MiB{per_session:>7.0f}{float(seconds):>7.1f} |"
        for step, r in runs.items():
            # CPU per request of Redis and of the gateway: what a larger working set costs.
            per_request = "/".join(f"{v * 1e4 / r['rps']:.1f}" for v in (use[step]["redis"], use[step]["gateways"][0]))
            line += f"{r['rps']:>{11 if step == 'info' else 14}.0f}{r['p50']:>6.2f}{r['p99']:>7.2f}{per_request:>13} |"
        errors = sum(r["errors"] for r in runs.values())
        print(f"{line}{touches:>6}{errors:>7}{busy:>9.0f}")

    population = int(lines(os.path.join(work, "parallel"))[0][0])
    print()
    print(f"on {count(population)} sessions, means of two rounds (1, 2, 2, 1 gateways); "
          f"CPU in % of one core: Redis / gateway(s) / wrk / others")
    print(f"{'step':<8}{'1 gateway req/s':>16}{'p99 ms':>7}{'2 gateways req/s':>17}{'p99 ms':>7}{'2/1':>6}{'rounds':>12}"
          f"  {'CPU, 1 gateway':<16}{'CPU, 2 gateways':<19}{'touch':>5}{'errors':>7}")
    ratios, errors_total = {}, 0
    for step in ("info", "consume"):
        rps, p99, use, per_round, errors = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}, [], 0
        for r in (1, 2):
            for n in (1, 2):
                name = f"par-{step}-{n}-r{r}"
                parts = [run(name)] if n == 1 else [run(f"{name}-{i}") for i in (0, 1)]
                rps[n].append(sum(p["rps"] for p in parts))
                p99[n].append(max(p["p99"] for p in parts))
                u = cpu(work, name, max(p["seconds"] for p in parts))
                use[n].append([u["redis"], *(u["gateways"][:n]), u["wrk"], u["others"]])
                errors += sum(p["errors"] for p in parts)
                if step == "info":
                    touched += writes(name)
            per_round.append(rps[2][-1] / rps[1][-1])
        mean = {n: sum(v) / len(v) for n, v in rps.items()}
        ratios[step] = mean[2] / mean[1]
        shown = {n: "/".join(f"{sum(col) / len(col):.0f}" for col in zip(*use[n])) for n in (1, 2)}
        others = max(others, *(row[-1] for n in (1, 2) for row in use[n]))
        errors_total += errors
        touches = sum(writes(f"par-info-{n}-r{r}") for n in (1, 2) for r in (1, 2)) if step == "info" else ""
        print(f"{step:<8}{mean[1]:>16.0f}{max(p99[1]):>7.2f}{mean[2]:>17.0f}{max(p99[2]):>7.2f}{ratios[step]:>6.2f}"
              f"{', '.join(f'{x:.2f}' for x in per_round):>12}  {shown[1]:<16}{shown[2]:<19}{touches:>5}{errors:>7}")

    (small, small_bytes, small_info, small_consume), (big, big_bytes, big_info, big_consume) = curve[0], curve[-1]
    print()
    print(f"summary: {count(small)} -> {count(big)} sessions: info req/s x{big_info['rps'] / small_info['rps']:.2f} "
          f"(p99 {small_info['p99']:.2f} -> {big_info['p99']:.2f} ms), consume x{big_consume['rps'] / small_consume['rps']:.2f} "
          f"(p99 {small_consume['p99']:.2f} -> {big_consume['p99']:.2f} ms), Redis {small_bytes:.0f} -> {big_bytes:.0f} B/session "
          f"({big_bytes * 1e6 / 2**20:.0f} MiB per million); 2 gateways / 1: info {ratios['info']:.2f}, "
          f"consume {ratios['consume']:.2f}, on {os.cpu_count()} cores shared by Redis, wrk and the gateways")
    if touched or errors_total or any(r["errors"] for _, _, *runs in curve for r in runs):
        print("warning: reads that wrote (touch) or wrong answers (errors) above: those runs did not measure what they should")
    if others > 25:
        print(f"warning: other processes took up to {others:.0f} % of a core during a run (others): rerun on a quieter machine")


main()
