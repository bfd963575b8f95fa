"""The faults report: one check table for all scenarios, and the markdown summary."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _clamp(value: float | None) -> float | None:
    """Times after "port open" can be slightly negative: the port is polled every 20 ms."""
    return None if value is None else max(value, 0.0)


def summary_markdown(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        f"# keyguard faults under load, {doc['started']}{' (quick)' if doc['quick'] else ''}",
        "",
        f"Driver: {doc['driver']}. Machine: {doc['machine']['before']['cpus']} CPUs, load"
        f" average {doc['machine']['before']['loadavg_1m']} before,"
        f" {doc['machine']['after']['loadavg_1m']} after.",
        "",
    ]
    outages = dict(doc.get("store_outage", {}))
    if "stall_outage" in doc:
        pause = doc["stall_outage"]["keyguard_paused_s_per_second"]
        outages[f"deny, keyguard paused {pause:g} s every second"] = doc["stall_outage"]
    if outages:
        lines += [
            f"## Redis SIGKILLed for {cfg['redis_down_for']:g} s during {cfg['duration']:g} s at"
            f" {cfg['rate']:g} rps (80% valid metered key, 10% unknown key, 10% disabled key)",
            "",
            "| KEYGUARD_ON_STORE_ERROR | requests | plain allows | degraded allows (valid / "
            "unknown) | 503 store_unavailable | 503 from Envoy (ext_authz timeout) |"
            " wrong allows | keyguard crashed |"
            " health SERVING after Redis back | first correct allow after redis-server"
            " start (after its port opened) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for mode, r in outages.items():
            f = r["figures"]
            lines.append(
                f"| {mode} | {f['requests']} | {f['ok_allows_valid']} |"
                f" {f['degraded_allows']['valid']} / {f['degraded_allows']['unknown']} |"
                f" {f['store_unavailable_503']} | {f['envoy_503']} | {f['wrong_allows']} |"
                f" {'no' if r['keyguard']['pid_unchanged_and_alive'] else 'YES'} |"
                f" {_fmt(f['health_serving_after_redis_back_s'])} s |"
                f" {_fmt(f['first_correct_allow_after_redis_spawn_s'])} s"
                f" ({_fmt(_clamp(f['first_correct_allow_after_redis_back_s']))} s) |"
            )
        lines.append("")
        lines.append("Answers by phase (key kind: outcome = count):")
        lines.append("")
        for mode, r in outages.items():
            for phase, totals in r["phases"].items():
                flat = ", ".join(
                    f"{kind}: {o}={n}" for kind, c in totals.items() for o, n in c.items()
                )
                lines.append(f"- {mode} / {phase}: {flat}")
        lines.append("")
    restart = doc.get("keyguard_restart")
    if restart:
        f = restart["figures"]
        lines += [
            f"## keyguard SIGKILLed under {cfg['rate']:g} rps, restarted after"
            f" {cfg['keyguard_down_for']:g} s",
            "",
            "| requests | 200 seen by client | requests reaching upstream | answered while down"
            " | of which Envoy 503 | keyguard start → listening | first allow after restart"
            " (from spawn / from listening) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {f['requests']} | {f['allowed_200']} | {f['upstream_requests']} |"
            f" {f['answered_while_down']} | {f['envoy_503_while_down']} |"
            f" {_fmt(f['keyguard_start_to_listening_s'])} s |"
            f" {_fmt(f['first_allow_after_restart_spawn_s'])} s /"
            f" {_fmt(_clamp(f['first_allow_after_keyguard_listening_s']))} s |",
            "",
        ]
    race = doc.get("quota_race")
    if race:
        allowed = race["totals"].get("200-ok", 0)
        refused = race["totals"].get("402-insufficient_quota", 0)
        other = race["requests"] - allowed - refused
        lines += [
            f"## Quota race: {race['clients']} concurrent clients, a key with {race['quota']}"
            " units",
            "",
            "| requests | 200 | 402 insufficient_quota | other | upstream requests |"
            " keys show remaining / used |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {race['requests']} | {allowed} | {refused} | {other} |"
            f" {race['upstream_requests']} |"
            f" {race['keys_show']['remaining']} / {race['keys_show']['used']} |",
            "",
        ]
    lines += ["## Checks", "", "| scenario | check | result |", "|---|---|---|"]
    for name, ok in doc["checks"].items():
        scenario, _, check = name.partition(": ")
        lines.append(f"| {scenario} | {check} | {'pass' if ok else 'FAIL'} |")
    lines.append("")
    return "\n".join(lines)


def collect_checks(doc: dict[str, Any]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    scenarios = [(f"outage/{mode}", r) for mode, r in doc.get("store_outage", {}).items()]
    scenarios += [
        (key, doc[key]) for key in ("keyguard_restart", "quota_race", "stall_outage") if key in doc
    ]
    for label, r in scenarios:
        for name, ok in r["checks"].items():
            checks[f"{label}: {name}"] = bool(ok)
        for name, ok in r["timing_checks"].items():
            checks[f"{label}: {name} (timing)"] = bool(ok)
    return checks
