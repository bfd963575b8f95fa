"""Targets, and the three outputs of a run: <date>.json, <date>.md, <date>.png."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from bench.rounds import paired_ratio


def _target(
    tid: str, description: str, value: float, limit: float, op: str, note: str = ""
) -> dict[str, Any]:
    passed = value <= limit if op == "<=" else value >= limit if op == ">=" else value < limit
    return {
        "id": tid,
        "description": description,
        "value": round(value, 3),
        "op": op,
        "limit": limit,
        "pass": bool(passed),
        "note": note,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    decision = results["decision_cpu"]
    cpu = {k: v["cpu_us_per_check"] for k, v in decision.items()}
    runs = {k: v["cpu_us_per_check_runs"] for k, v in decision.items()}
    e2e = results["e2e"]
    fixed = results["fixed_rate"]
    flood = results["unknown_key_flood"]
    floor, floor_4k = cpu["floor"], cpu["floor_4k"]
    # The median of per-round differences, as with the ratios.
    p99_delta = statistics.median(
        a - b
        for a, b in zip(
            fixed["keyguard_tcp"]["p99_ms_runs"], fixed["api_key_auth"]["p99_ms_runs"], strict=True
        )
    )
    e2e_errors = sum(e2e[n]["non_2xx"] + e2e[n]["socket_errors"] for n in ("floor", "keyguard_tcp"))
    rate_errors = sum(
        fixed[n]["non_200"] + fixed[n]["failed"] for n in ("api_key_auth", "keyguard_tcp")
    )
    out = [
        _target(
            "b_cpu",
            "(b) unlimited key, cache hit, cost=0: CPU/Check ÷ floor",
            paired_ratio(runs["b_unlimited_cost0"], runs["floor"]),
            1.2,
            "<=",
            f"medians {cpu['b_unlimited_cost0']} vs {floor} µs; cost=1 (batched usage): "
            f"{paired_ratio(runs['b_unlimited_cost1'], runs['floor']):.2f}x; LOG_ALLOWS=false: "
            f"{paired_ratio(runs['b_unlimited_cost0_nolog'], runs['floor']):.2f}x",
        ),
        _target(
            "c_cpu",
            "(c) quota key + rpm (one Redis call): CPU/Check ÷ floor",
            paired_ratio(runs["c_quota_rpm"], runs["floor"]),
            1.5,
            "<=",
            f"medians {cpu['c_quota_rpm']} vs {floor} µs",
        ),
        _target(
            "c_tokens_cpu",
            "(c) token metering: quota key + rpm, a hold placed (one Redis call): "
            "CPU/Check ÷ floor",
            paired_ratio(runs["c_tokens_hold"], runs["floor"]),
            1.3,
            "<=",
            f"medians {cpu['c_tokens_hold']} vs {floor} µs; the same key in request units "
            f"(the (c) above): {paired_ratio(runs['c_quota_rpm'], runs['floor']):.2f}x, so "
            f"the hold adds {paired_ratio(runs['c_tokens_hold'], runs['c_quota_rpm']):.2f}x",
        ),
        _target(
            "d_cpu",
            "(d) model list, 4 KB body: CPU/Check ÷ floor with the same 4 KB payload",
            paired_ratio(runs["d_models_4k"], runs["floor_4k"]),
            1.5,
            "<=",
            f"medians {cpu['d_models_4k']} vs {floor_4k} µs",
        ),
        _target(
            "e2e_rps",
            "End to end requests/s: keyguard (TCP) ÷ floor servicer",
            paired_ratio(e2e["keyguard_tcp"]["rps_runs"], e2e["floor"]["rps_runs"]),
            0.85,
            ">=",
            f"medians {e2e['keyguard_tcp']['rps']:.0f} vs {e2e['floor']['rps']:.0f} rps; over a "
            "Unix socket "
            f"{paired_ratio(e2e['keyguard_unix']['rps_runs'], e2e['floor']['rps_runs']):.2f}x",
        ),
        _target(
            "p99_1000rps",
            "At 1,000 rps: p99(keyguard) - p99(api_key_auth), ms",
            p99_delta,
            2.0,
            "<=",
            f"{fixed['keyguard_tcp']['p99_ms']:.2f} - {fixed['api_key_auth']['p99_ms']:.2f} ms",
        ),
        _target(
            "flood_rss",
            "1M unknown keys: keyguard RSS, MB" + (" (extrapolated)" if flood["projected"] else ""),
            flood["rss_projected_1m_mb"],
            150.0,
            "<",
            f"measured {flood['rss_start_mb']}→{flood['rss_end_mb']} MB over "
            f"{flood['distinct_keys']:,} keys",
        ),
        _target(
            "flood_lookups",
            "Unknown keys: Redis lookups per distinct key (each key sent twice within the TTL)",
            flood["redis_lookups_per_distinct_key"],
            1.0,
            "<=",
            f"{flood['redis_lookups']:,} HGETALL for {flood['distinct_keys']:,} keys, "
            f"negative-cache TTL {flood['negative_cache_ttl_s']:g}s",
        ),
    ]
    # Figures that include failed requests are not figures of real decisions.
    for target, errors in ((out[4], e2e_errors), (out[5], rate_errors)):
        if errors:
            target["pass"] = False
            target["note"] += f"; {errors} requests failed or were not 200, so this fails"
    out += metering_targets(results["metering"])
    return out


def metering_targets(meter: dict[str, Any]) -> list[dict[str, Any]]:
    on, off = meter["metering_on"], meter["metering_off"]
    requests = on["requests"]
    out = [
        _target(
            "metering_rps",
            "Token metering through Envoy, one metered key, JSON with usage: requests/s on ÷ off",
            meter["rps_ratio"],
            0.85,
            ">=",
            f"medians {on['rps']:.0f} vs {off['rps']:.0f} rps; keyguard CPU per request "
            f"(Check + settlement) {on['keyguard_cpu_us_per_request']} vs "
            f"{off['keyguard_cpu_us_per_request']} µs ({meter['keyguard_cpu_ratio']:.2f}x), "
            f"Envoy {on['envoy_cpu_us_per_request']} vs {off['envoy_cpu_us_per_request']} µs",
        ),
        _target(
            "metering_spend_calls",
            "Token metering: spend.lua calls per request at Check (keyguard's count)",
            on["spend_calls"] / requests,
            1.0,
            "<=",
            f"{on['spend_calls']:,} for {requests:,} requests; metering off: "
            f"{off['spend_calls'] / off['requests']:.2f}",
        ),
        _target(
            "metering_settle_calls",
            "Token metering: settle.lua calls per request (batched per key)",
            on["settle_calls"] / requests,
            0.2,
            "<=",
            f"{on['settle_calls']:,} for {requests:,} requests; all EVALSHA in Redis "
            f"commandstats {on['redis_scripts'] / requests:.3f} per request",
        ),
    ]
    # A round that did not prove its settlement (used, held, counts) proves nothing.
    problems = on["problems"] + off["problems"]
    if problems or on["non_2xx"] or off["non_2xx"]:
        for target in out:
            target["pass"] = False
            target["note"] += (
                f"; fails: {on['non_2xx'] + off['non_2xx']} requests not 2xx, "
                + "; ".join(problems[:3])
            )
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# keyguard benchmark, {results['date']} ({results['mode']} run)",
        "",
        f"{env['cpu_count']} CPUs ({env['cpu_model']}), {env['platform']}. Python "
        f"{env['python']}, grpcio {env['grpcio']}, protobuf {env['protobuf']} "
        f"({env['protobuf_backend']} backend), Envoy {env['envoy']}, Redis {env['redis']}, "
        f"{env['wrk']}, {env['h2load']}. Wall time {results['wall_seconds']}s. Load average "
        f"{results['loadavg_before']} before, {results['loadavg_after']} after (other work on "
        f"the machine shows here and adds noise).",
        "",
        "## Targets",
        "",
        "| Target | Value | Limit | Result | Detail |",
        "|---|---:|---:|---|---|",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['description']} | {t['value']:.2f} | {t['op']} {t['limit']:g} | "
            f"{'PASS' if t['pass'] else 'FAIL'} | {t['note']} |"
        )
    lines += [
        "",
        "## 1. Decision CPU cost (h2load direct to the gRPC server)",
        "",
        "Server CPU (utime+stime from /proc) over a fixed number of Checks, divided by the "
        "number of Checks; the setups take turns, and the median of the runs counts. Payloads "
        'are CheckRequests captured from the deployed Envoy config. "Other load" is CPU '
        "used meanwhile by processes outside the measurement (machine busy time minus the "
        "server, Redis and h2load), per run: high values mean the figure is noisy. "
        '"x floor" is the median of the per-round ratios (each run divided by the floor\'s run '
        "of the same round), the figure the targets use.",
        "",
        "| Setup | µs CPU/Check (median) | runs | x floor | Checks/s | Redis calls/Check "
        "| Redis µs CPU/Check | other load, % CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    cpu = results["decision_cpu"]
    for name, row in cpu.items():
        base = cpu["floor_4k" if "4k" in name else "floor"]["cpu_us_per_check_runs"]
        runs = " ".join(f"{c:.0f}" for c in row["cpu_us_per_check_runs"])
        other = " ".join(f"{c:.0f}" for c in row["other_load_pct_runs"])
        lines.append(
            f"| {row['label']} | {row['cpu_us_per_check']:.1f} | {runs} | "
            f"{paired_ratio(row['cpu_us_per_check_runs'], base):.2f} | {row['rps']:,.0f} | "
            f"{row['redis_calls_per_check']:.2f} | {row['redis_cpu_us_per_check']:.1f} | "
            f"{other} |"
        )
    fl = results["unknown_key_flood"]
    lines += [
        "",
        "## (e) Flood of unknown well-formed keys",
        "",
        f"Driver: {fl['driver']}.",
        "",
        "| Distinct keys | Checks | New keys/s | µs CPU/Check | Redis lookups/key | "
        "RSS start → max → end | RSS at 1M keys |",
        "|---:|---:|---:|---:|---:|---|---:|",
        f"| {fl['distinct_keys']:,} | {fl['checks']:,} | {fl['new_keys_per_second']:,.0f} | "
        f"{fl['cpu_us_per_check']:.1f} | {fl['redis_lookups_per_distinct_key']:.3f} | "
        f"{fl['rss_start_mb']} → {fl['rss_max_mb']} → {fl['rss_end_mb']} MB | "
        f"{fl['rss_projected_1m_mb']} MB{' (extrapolated)' if fl['projected'] else ''} |",
        "",
        fl["note"] + ".",
        "",
        "## 2. End to end through Envoy (wrk -t1 -c32, Envoy --concurrency 1, direct_response)",
        "",
        "The setups take turns for a few rounds; each figure is the median over the rounds, "
        "and the target is the median of the per-round ratios.",
        "",
        "| Setup | Requests/s (median) | runs | p50 ms | p99 ms | Envoy µs CPU/req | "
        "authz server µs CPU/req | not 2xx | other load, % CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["e2e"].values():
        rps_runs = " ".join(f"{r:,.0f}" for r in row["rps_runs"])
        lines.append(
            f"| {row['label']} | {row['rps']:,.0f} | {rps_runs} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | "
            f"{_fmt(row['envoy_cpu_us_per_request'], 1)} | "
            f"{_fmt(row['authz_cpu_us_per_request'], 1)} | "
            f"{row['non_2xx'] + row['socket_errors']} | {row['other_load_pct']:.0f} |"
        )
    lines += [
        "",
        "## 3. Fixed rate, 1,000 requests/s through Envoy",
        "",
        f"Tool: {results['fixed_rate_tool']}",
        "",
        "Each figure is the median over the rounds (setups take turns); the p99 target is the "
        "median of the per-round differences. p99 per round: "
        + "; ".join(
            f"{row['label']} {', '.join(f'{v:.2f}' for v in row.get('p99_ms_runs', []))}"
            for row in results["fixed_rate"].values()
        )
        + ".",
        "",
        "| Setup | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | achieved rps | not 200 "
        "| other load, % CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["fixed_rate"].values():
        lines.append(
            f"| {row['label']} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f}"
            f" | {row['p999_ms']:.2f} | {row['max_ms']:.2f} | {row['achieved_rps']:,.0f} | "
            f"{row['non_200'] + row['failed']} | {row['other_load_pct']:.0f} |"
        )
    fixed = results["fixed_rate"]
    delta = {
        q: fixed["keyguard_tcp"][q] - fixed["api_key_auth"][q]
        for q in ("p50_ms", "p99_ms", "p999_ms")
    }
    lines += [
        "",
        f"keyguard - api_key_auth: p50 {delta['p50_ms']:+.2f} ms, p99 {delta['p99_ms']:+.2f} ms,"
        f" p99.9 {delta['p999_ms']:+.2f} ms.",
        "",
        "## 4. Workers (h2load direct, 16 connections)",
        "",
        "| Workers | Checks/s | µs CPU/Check (all processes) |",
        "|---:|---:|---:|",
    ]
    wk = results["workers"]
    for count in ("1", "2"):
        lines.append(f"| {count} | {wk[count]['rps']:,.0f} | {wk[count]['cpu_us_per_check']:.1f} |")
    lines += ["", f"Speed-up with 2 workers: {wk['speedup']}x.", ""]
    lines += metering_markdown(results["metering"])
    return "\n".join(lines)


def metering_markdown(meter: dict[str, Any]) -> list[str]:
    lines = [
        "## 5. Token metering through Envoy (one metered key, JSON responses with usage)",
        "",
        "The deployed envoy.yaml (ext_authz, json_to_metadata / sse_to_metadata, the gRPC "
        "access log to keyguard), its catch-all route answering a "
        f"{meter['response']} (cost {meter['cost_per_response']} credits each at the price "
        "set), in front of keyguard with KEYGUARD_METERING=tokens (on: a hold at Check, "
        "settled in batches from the access log) or =request (off: the same spend.lua call "
        f"spends one unit). Load: {meter['load']}. keyguard's CPU runs until the key holds "
        "nothing, so it includes settlement. spend and settle calls are keyguard's own "
        "per-operation counts; EVALSHA is Redis's commandstats (all scripts).",
        "",
        "| Mode | Requests/s (median) | runs | keyguard µs CPU/req | Envoy µs CPU/req | "
        "Redis µs CPU/req | spend.lua/req | settle.lua/req | EVALSHA/req | used grew by "
        "(expected) | held after | other load, % CPU |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in ("metering_off", "metering_on"):
        row = meter[name]
        requests = row["requests"]
        rps_runs = " ".join(f"{r:,.0f}" for r in row["rps_runs"])
        other = " ".join(f"{o:.0f}" for o in row["other_load_pct_runs"])
        lines.append(
            f"| {row['label']} | {row['rps']:,.0f} | {rps_runs} | "
            f"{row['keyguard_cpu_us_per_request']:.1f} | {row['envoy_cpu_us_per_request']:.1f} "
            f"| {row['redis_cpu_us_per_request']:.1f} | {row['spend_calls'] / requests:.3f} | "
            f"{row['settle_calls'] / requests:.4f} | {row['redis_scripts'] / requests:.3f} | "
            f"{row['used_delta']:,} ({row['used_expected']:,}) | "
            f"{', '.join(str(h) for h in row['held_after'])} | {other} |"
        )
    lines += [
        "",
        f"On ÷ off (medians of per-round ratios): requests/s {meter['rps_ratio']:.2f}x, "
        f"keyguard CPU per request {meter['keyguard_cpu_ratio']:.2f}x. Settlements (on): "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(meter["metering_on"]["settlements"].items()))
        + ".",
        "",
    ]
    for name in ("metering_off", "metering_on"):
        lines.append(f"- {meter[name]['label']}: {meter[name]['verified']}.")
    problems = meter["metering_on"]["problems"] + meter["metering_off"]["problems"]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems) + "."]
    lines.append("")
    return lines


def chart(results: dict[str, Any], path: Path) -> None:
    e2e = results["e2e"]
    fixed = results["fixed_rate"]
    cpu = results["decision_cpu"]
    fig, axes = plt.subplots(2, 3, figsize=(20, 9))
    fig.suptitle(
        f"keyguard benchmark {results['date']} ({results['mode']}), "
        f"{results['environment']['cpu_count']} CPUs"
    )

    ax = axes[0][0]
    names = list(e2e)
    labels = [n.replace("_", "\n") for n in names]
    ax.bar(labels, [e2e[n]["rps"] for n in names], color="tab:blue")
    ax.set_title("End to end through Envoy: requests/s (wrk -c32)")
    ax.set_ylabel("requests/s")
    for i, n in enumerate(names):
        ax.annotate(f"{e2e[n]['rps']:,.0f}", (i, e2e[n]["rps"]), ha="center", va="bottom")

    ax = axes[0][1]
    width = 0.38
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [e2e[n]["p50_ms"] for n in names], width, label="p50")
    ax.bar([x + width / 2 for x in xs], [e2e[n]["p99_ms"] for n in names], width, label="p99")
    ax.set_xticks(list(xs), labels)
    ax.set_yscale("log")
    ax.set_title("End to end latency under closed-loop load (wrk -c32)")
    ax.set_ylabel("ms (log)")
    ax.legend()

    ax = axes[1][0]
    rnames = list(fixed)
    width = 0.27
    xs = range(len(rnames))
    for offset, (q, label) in zip(
        (-width, 0.0, width),
        (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")),
        strict=True,
    ):
        ax.bar([x + offset for x in xs], [fixed[n][q] for n in rnames], width, label=label)
    ax.set_xticks(list(xs), [n.replace("_", "\n") for n in rnames])
    ax.set_title("Latency at a fixed 1,000 requests/s (h2load open loop)")
    ax.set_ylabel("ms")
    ax.legend()

    ax = axes[1][1]
    cnames = list(cpu)
    ax.barh(
        [cpu[n]["label"] for n in cnames],
        [cpu[n]["cpu_us_per_check"] for n in cnames],
        color=["tab:gray" if n.startswith("floor") else "tab:green" for n in cnames],
    )
    ax.invert_yaxis()
    ax.set_title("Server CPU per Check (h2load direct)")
    ax.set_xlabel("µs CPU / Check")
    ax.tick_params(axis="y", labelsize=8)

    ax = axes[0][2]
    flood = results["unknown_key_flood"]
    points = flood["rss_by_keys"]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color="tab:red")
    ax.axhline(150, color="gray", linestyle="--", linewidth=1)
    ax.axvline(flood["negative_cache_size"], color="gray", linestyle=":", linewidth=1)
    ax.set_title("(e) keyguard RSS during the unknown-key flood")
    ax.set_xlabel("distinct unknown keys sent")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / 1000:,.0f}k"))
    ax.set_ylabel("RSS, MB")
    ax.set_ylim(bottom=0, top=max(160.0, max(p[1] for p in points) * 1.1))

    ax = axes[1][2]
    wk = results["workers"]
    ax.bar(["--workers 1", "--workers 2"], [wk["1"]["rps"], wk["2"]["rps"]], color="tab:purple")
    ax.set_title("Checks/s, h2load direct to keyguard (16 connections)")
    ax.set_ylabel("Checks/s")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # A second run the same day gets <date>-2, -3, …: earlier results are never overwritten.
    stem, number = results["date"], 1
    while (out_dir / f"{stem}.json").exists():
        number += 1
        stem = f"{results['date']}-{number}"
    paths = {
        "json": out_dir / f"{stem}.json",
        "md": out_dir / f"{stem}.md",
        "png": out_dir / f"{stem}.png",
    }
    paths["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    paths["md"].write_text(markdown(results))
    chart(results, paths["png"])
    return paths
