"""The markdown appended to bench/RESULTS.md for one run (from the run's JSON document)."""

from __future__ import annotations

import statistics
from typing import Any

_REF_PROTOCOL = "v1"  # every peer speaks a V1-shaped body; ratios compare like with like


def _find(
    rows: list[dict[str, Any]],
    workload: str,
    server: str,
    connections: int,
    protocol: str | None = _REF_PROTOCOL,
) -> dict[str, Any] | None:
    for r in rows:
        if (
            r["workload"] == workload
            and r["server"] == server
            and r["connections"] == connections
            and (protocol is None or r["protocol"] == protocol)
        ):
            return r
    return None


_KEY = ("workload", "server", "protocol", "connections")
_MEDIANS = (
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "mean_batch",
    "cpu_ms_per_request",
    "front_cpu_ms_per_request",
)


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, server, protocol, clients): medians over rounds, errors summed."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(tuple(r[k] for k in _KEY), []).append(r)
    out = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(_KEY, key, strict=True))
        for m in _MEDIANS:
            # runs recorded before a measure existed lack it: 0.0, shown as "-"
            row[m] = statistics.median(r.get(m, 0.0) for r in rs)
        row["errors"] = sum(r["errors"] for r in rs)
        row["rounds"] = len(rs)
        row["rps_min"] = min(r["rps"] for r in rs)
        row["rps_max"] = max(r["rps"] for r in rs)
        reported = [r["server_reported_mean_batch"] for r in rs if r["server_reported_mean_batch"]]
        row["server_reported_mean_batch"] = statistics.median(reported) if reported else None
        row["generator"] = rs[0]["generator"]
        out.append(row)
    return out


def _ratio(a: float, ref: dict[str, Any] | None) -> str:
    if ref is None or not ref["rps"]:
        return "-"
    return f"{a / ref['rps']:.1f}x"


def _cpu_ratio(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """How many times fewer server CPU-seconds a request costs than on `ref`."""
    if ref is None or not r["cpu_ms_per_request"]:
        return "-"
    return f"{ref['cpu_ms_per_request'] / r['cpu_ms_per_request']:.1f}x"


def _model_share(r: dict[str, Any], model_cpu_ms_per_row: float | None) -> str:
    """The model's own CPU cost at full batches (one row per request) as a share of what the
    server spent per request: 100% would be a server with no overhead at all."""
    if not model_cpu_ms_per_row or not r["cpu_ms_per_request"]:
        return "-"
    return f"{100 * model_cpu_ms_per_row / r['cpu_ms_per_request']:.0f}%"


def _rps(r: dict[str, Any]) -> str:
    if r.get("rounds", 1) > 1:
        return f"{r['rps']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f})"
    return f"{r['rps']:,.0f}"


def _fmt_ms(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _rounds(doc: dict[str, Any]) -> str:
    n = doc.get("rounds", 1)
    if n <= 1:
        return ""
    return f"; {n} rounds, peer order reversed on odd rounds, medians shown (req/s range)"


def _cpu(ms: float) -> str:
    return f"{ms:.3f}" if ms else "-"


def _goal(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(doc: dict[str, Any]) -> str:
    rows: list[dict[str, Any]] = doc["summary"]
    conns: int = doc["load"]["connections"]
    mod: int = doc["moderate_connections"]
    m = doc["machine"]
    v = m["versions"]
    k = doc["knobs"]
    gen = sorted({r["generator"] for r in rows}) or ["-"]
    out = [
        f"\n## {doc['started'].replace('T', ' ').replace('+00:00', ' UTC')}\n\n",
        f"Command: `{doc['command']}` (commit {m['commit']})\n\n",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), shared with other work; load average "
        f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end. "
        f"Python {v['python']}, torch {v.get('torch')}, Ray {v.get('ray')}, "
        f"KServe {v.get('kserve')}. {doc.get('notes') or ''}\n\n",
        f"Knobs (every server): max_batch_size {k['max_batch_size']}, batch_wait_timeout_s "
        f"{k['batch_wait_timeout_s']}, torch threads {k['torch_threads']}; {conns} closed-loop "
        f"connections from {', '.join(gen)} (-t{doc['load']['wrk_threads']}), "
        f"{doc['load']['warmup_s']:g} s warm-up then {doc['load']['duration_s']:g} s measured "
        f"per row, one server at a time{_rounds(doc)}. Mean batch = rows/calls counted inside "
        "the model (same instrument in every server). Server CPU = user+sys time of the "
        "server's whole session, every process it started (for the gateway: gateway + replica), "
        "in the window.\n",
    ]
    for wname, wl in doc["workloads"].items():
        limit = doc["limits"].get(wname, {}).get("rows_per_s", 0.0)
        model_cpu = doc["limits"].get(wname, {}).get("cpu_ms_per_row")
        ray = _find(rows, wname, "ray-serve", conns)
        ks = _find(rows, wname, "kserve", conns)
        floor = _find(rows, wname, "floor", conns)
        out.append(f"\n### {wname}: {wl['what']}; model-bound limit {limit:,.0f} rows/s\n\n")
        out.append(
            "| server | protocol | req/s | p50 ms | p99 ms | errors | mean batch "
            "| server CPU ms/req | vs Ray Serve | vs KServe | vs floor | % of limit "
            "| vs Ray Serve, per CPU-s | model % of server CPU |\n"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in rows:
            if r["workload"] != wname or r["connections"] != conns:
                continue
            pct = f"{100 * r['rps'] / limit:.0f}%" if limit else "-"
            out.append(
                f"| {r['server']} | {r['protocol'].upper()} | {_rps(r)} "
                f"| {_fmt_ms(r['p50_ms'])} | {_fmt_ms(r['p99_ms'])} | {r['errors']} "
                f"| {r['mean_batch']:.1f} | {r['cpu_ms_per_request']:.3f} "
                f"| {_ratio(r['rps'], ray)} | {_ratio(r['rps'], ks)} "
                f"| {_ratio(r['rps'], floor)} | {pct} | {_cpu_ratio(r, ray)} "
                f"| {_model_share(r, model_cpu)} |\n"
            )
    gw_lines = []
    for wname in doc["workloads"]:
        for c in (conns, mod):
            for proto in ("v2", "v1"):
                d = _find(rows, wname, "shoal", c, proto)
                g = _find(rows, wname, "shoal-gateway", c, proto)
                if d is None or g is None:
                    continue
                gw_lines.append(
                    f"| {wname} | {proto.upper()} | {c} | {d['rps']:,.0f} | {g['rps']:,.0f} "
                    f"| {_fmt_ms(d['p50_ms'])} | {_fmt_ms(g['p50_ms'])} "
                    f"| {g['p50_ms'] - d['p50_ms']:+.2f} | {_fmt_ms(d['p99_ms'])} "
                    f"| {_fmt_ms(g['p99_ms'])} | {g['p99_ms'] - d['p99_ms']:+.2f} "
                    f"| {_cpu(g['front_cpu_ms_per_request'])} |\n"
                )
    if gw_lines:
        out.append("\n### Gateway: the same replica direct vs through `shoal gateway`\n\n")
        out.append(
            "| workload | protocol | clients | direct req/s | gateway req/s | direct p50 "
            "| gateway p50 | added p50 ms | direct p99 | gateway p99 | added p99 ms "
            "| gateway's own CPU ms/req |\n"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        out.extend(gw_lines)
    out.extend(_goals(doc, rows, conns, mod))
    out.extend(_limit_goals(rows, conns))
    if doc["failures"]:
        out.append("\nFailures:\n")
        for f in doc["failures"]:
            first = f["error"].strip().splitlines()[0] if f["error"].strip() else "?"
            out.append(f"- {f['workload']} {f['peer']}: {first[:300]}\n")
    return "".join(out)


def _goals(doc: dict[str, Any], rows: list[dict[str, Any]], conns: int, mod: int) -> list[str]:
    lines: list[str] = []
    ray = _find(rows, "W1", "ray-serve", conns)
    ks = _find(rows, "W1", "kserve", conns)
    for proto in ("v1", "v2"):
        s = _find(rows, "W1", "shoal", conns, proto)
        if s is not None and ray is not None:
            x = s["rps"] / ray["rps"]
            lines.append(
                f"- W1 Shoal {proto.upper()} vs Ray Serve: {x:.1f}x (goal >= 50x), "
                f"p99 {s['p99_ms']:.1f} ms (goal < 20 ms): "
                f"{_goal(x >= 50 and s['p99_ms'] < 20)}\n"
            )
        if s is not None and ks is not None:
            x = s["rps"] / ks["rps"]
            lines.append(
                f"- W1 Shoal {proto.upper()} vs KServe: {x:.1f}x (goal >= 5x): {_goal(x >= 5)}\n"
            )
        g = _find(rows, "W1", "shoal-gateway", conns, proto)
        if g is not None and ray is not None:
            x = g["rps"] / ray["rps"]
            lines.append(
                f"- W1 through the gateway {proto.upper()} vs Ray Serve: {x:.1f}x "
                f"(goal >= 25x): {_goal(x >= 25)}\n"
            )
    limit = doc["limits"].get("W2", {}).get("rows_per_s")
    for proto in ("v1", "v2"):
        s = _find(rows, "W2", "shoal", conns, proto)
        if s is not None and limit:
            pct = 100 * s["rps"] / limit
            lines.append(
                f"- W2 Shoal {proto.upper()}: {pct:.0f}% of the model-bound limit "
                f"(goal >= 90%): {_goal(pct >= 90)}\n"
            )
    d = _find(rows, "W1", "shoal", mod, "v2")
    g = _find(rows, "W1", "shoal-gateway", mod, "v2")
    if d is not None and g is not None:
        a50, a99 = g["p50_ms"] - d["p50_ms"], g["p99_ms"] - d["p99_ms"]
        lines.append(
            f"- Gateway added latency at {mod} clients (W1 V2): p50 {a50:+.2f} ms "
            f"(goal < 1 ms), p99 {a99:+.2f} ms (goal < 3 ms): "
            f"{_goal(a50 < 1 and a99 < 3)}\n"
        )
    for wname in ("W1", "W2"):
        idle = _find(rows, wname, "shoal", 1, "v2")
        one = doc["limits"].get(wname, {}).get("single_row_call_ms")
        if idle is not None and one is not None:
            wait_ms = doc["knobs"]["batch_wait_timeout_s"] * 1e3
            bound = wait_ms + one + 1.0
            lines.append(
                f"- {wname} idle (1 client) Shoal V2: p50 {idle['p50_ms']:.2f} ms, mean batch "
                f"{idle['mean_batch']:.1f} (goal: batch_wait_timeout_s {wait_ms:g} ms + one model "
                f"call {one:.2f} ms, +1 ms allowed for HTTP on loopback = {bound:.2f} ms): "
                f"{_goal(idle['p50_ms'] <= bound)}\n"
            )
    floor = _find(rows, "W1", "floor", conns)
    for proto in ("v1", "v2"):
        s = _find(rows, "W1", "shoal", conns, proto)
        if s is None or not s["cpu_ms_per_request"]:
            continue
        parts = [
            f"- W1 server CPU per request, Shoal {proto.upper()}: {s['cpu_ms_per_request']:.3f} ms"
        ]
        for name, ref in (("floor", floor), ("Ray Serve", ray), ("KServe", ks)):
            if ref is not None and ref["cpu_ms_per_request"]:
                x = s["cpu_ms_per_request"] / ref["cpu_ms_per_request"]
                share = f"{x:.2f}x" if x >= 1 else f"1/{1 / x:.1f}"
                parts.append(f"{share} of {name}'s {ref['cpu_ms_per_request']:.3f} ms")
        lines.append(", ".join(parts) + " (context, no goal)\n")
    if lines:
        lines.insert(0, "\nGoals (issues 3 and 6):\n\n")
    return lines


def _limit_goals(rows: list[dict[str, Any]], conns: int) -> list[str]:
    """Issue 16: V2 as cheap as V1, the runtime within 10 % of the floor, the gateway >= 0.8x
    direct (each judged within this run: ratios, not absolute numbers)."""
    lines: list[str] = []
    v1 = _find(rows, "W1", "shoal", conns, "v1")
    v2 = _find(rows, "W1", "shoal", conns, "v2")
    if v1 is not None and v2 is not None and v1["rps"]:
        x = v2["rps"] / v1["rps"]
        lines.append(f"- W1 Shoal V2 / V1 req/s: {x:.2f} (goal >= 0.95): {_goal(x >= 0.95)}\n")
    for wname in ("W1", "W2"):
        floor = _find(rows, wname, "floor", conns)
        if floor is None or not floor["rps"]:
            continue
        for proto in ("v1", "v2"):
            s = _find(rows, wname, "shoal", conns, proto)
            if s is None:
                continue
            x = s["rps"] / floor["rps"]
            extra = s["p99_ms"] - floor["p99_ms"]
            ok = x >= 0.9 and (wname != "W1" or extra <= 1.0)
            p99 = f", p99 {extra:+.2f} ms vs the floor's (goal <= +1 ms)" if wname == "W1" else ""
            lines.append(
                f"- {wname} Shoal {proto.upper()} / floor req/s: {x:.2f} (goal >= 0.9){p99}: "
                f"{_goal(ok)}\n"
            )
            if wname == "W1" and s["cpu_ms_per_request"] and floor["cpu_ms_per_request"]:
                c = s["cpu_ms_per_request"] / floor["cpu_ms_per_request"]
                lines.append(
                    f"- W1 Shoal {proto.upper()} server CPU per request / floor's: {c:.2f} "
                    f"(goal <= 1.15): {_goal(c <= 1.15)}\n"
                )
    for proto in ("v1", "v2"):
        d = _find(rows, "W1", "shoal", conns, proto)
        g = _find(rows, "W1", "shoal-gateway", conns, proto)
        if d is None or g is None or not d["rps"]:
            continue
        x = g["rps"] / d["rps"]
        own = g.get("front_cpu_ms_per_request") or 0.0
        cost = f", the gateway's own CPU {own:.3f} ms/req" if own else ""
        lines.append(
            f"- W1 through the gateway / direct, {proto.upper()} at {conns} clients: {x:.2f} "
            f"(goal >= 0.8){cost}: {_goal(x >= 0.8)}\n"
        )
    if lines:
        lines.insert(0, "\nGoals (issue 16, within this run):\n\n")
    return lines
