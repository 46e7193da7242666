"""One table over bench/results/*.json: each benchmark's ratio against its floor (or its target figure)."""

from __future__ import annotations

import json
from typing import Any

from bench.report import RESULTS, table


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    execute = _load("execute")
    if execute:
        last = execute["rows"][-1]
        out.append({"benchmark": "1 execute: API exec/s / bare chain/s", "figure": execute["ratio_median"],
                    "target": ">= 0.8", "met": execute["ratio_median"] >= 0.8,
                    "detail": f"api {last['api_executions_per_s']:.1f}/s vs bare {last['bare_chains_per_s']:.1f}/s; "
                              f"cpu {last['api_cpu_ms_each']:.0f} vs {last['bare_cpu_ms_each']:.0f} ms"})
        if "floor_ratio_median" in execute:
            out.append({"benchmark": "1 execute: HTTP floor / bare chain", "figure": execute["floor_ratio_median"],
                        "target": "-", "met": "",
                        "detail": f"a Flask view that only sends the bare chain: {last['http_floor_per_s']:.1f}/s, "
                                  f"cpu {last['floor_cpu_ms_each']:.0f} ms"})
        latency = execute["first_delta_ms"]
        out.append({"benchmark": "1 execute: first delta p50 (ms)", "figure": latency["p50"], "target": "< 50",
                    "met": latency["p50"] < 50, "detail": f"p99 {latency['p99']:.1f} ms, n={latency['runs']}"})
    messaging = _load("messaging")
    if messaging:
        out.append({"benchmark": "2 messaging: single / raw pika", "figure": messaging["single_ratio"],
                    "target": ">= 0.9", "met": messaging["single_ratio"] >= 0.9, "detail": ""})
        out.append({"benchmark": "2 messaging: batch / pipelined raw", "figure": messaging["batch_ratio"],
                    "target": ">= 0.5", "met": messaging["batch_ratio"] >= 0.5,
                    "detail": "send->readable p50/p99 "
                              + ", ".join(f"{k} {v['p50']:.0f}/{v['p99']:.0f} ms"
                                          for k, v in messaging.get("latency_ms", {}).items())})
    sse = _load("sse_streams")
    if sse:
        for row in sse["rows"]:
            ok = row["lost"] == 0 and row["out_of_order_streams"] == 0
            out.append({"benchmark": f"3 sse: {row['streams']} streams p99 lag (ms)", "figure": row["lag_p99_ms"],
                        "target": "< 200 (1000)", "met": ok and (row["streams"] < 1000 or row["lag_p99_ms"] < 200),
                        "detail": f"lost {row['lost']}, {row['rate_per_stream']:g} deltas/s each, "
                                  f"{row['web_cpu_us_per_delta']:.0f} us web cpu/delta"})
    scale = _load("agents_scale")
    if scale and "floor_declares_per_s" in scale:
        for row in scale["rows"]:
            target = "< 5" if row["design"] == "notified" and row["agents"] >= 100_000 else "-"
            out.append({"benchmark": f"4 agents: {row['design']} {row['agents']:,} idle mailbox cpu %",
                        "figure": row["mailbox_idle_cpu_pct"], "target": target,
                        "met": row["mailbox_idle_cpu_pct"] < 5 if target != "-" else "",
                        "detail": f"send->stored p50/p99 {row['stored_p50_ms']:.0f}/{row['stored_p99_ms']:.0f} ms, "
                                  f"stream p50/p99 {row['stream_p50_ms']:.0f}/{row['stream_p99_ms']:.0f} ms, "
                                  f"POST /agents {row['api_creates_per_s']:.0f}/s "
                                  f"(floor {scale['floor_declares_per_s']:.0f} declares/s), "
                                  f"{row.get('mem_per_agent_kb', row.get('mem_per_queue_kb', 0.0)):.0f} KB/agent"})
    fairness = _load("fairness")
    if fairness:
        busy, idle, tokens = fairness["busy_wait_s"], fairness["idle_wait_s"], fairness["tokens"]
        out.append({"benchmark": "5 fairness: B queue wait p99 behind A (s)", "figure": busy["p99"],
                    "target": "< 2", "met": busy["p99"] < 2,
                    "detail": f"idle p50/p99 {idle['p50']:.3f}/{idle['p99']:.3f} s, busy p50 {busy['p50']:.3f} s; "
                              f"failed over a limit {fairness['failed_over_limit']}, leaked slots "
                              f"{sum(fairness['after_kill']['leaked_slots'].values())}"})
        out.append({"benchmark": "5 fairness: most tokens in any 60 s / limit", "figure":
                    round(tokens["max_in_any_60s"] / tokens["limit_per_min"], 3),
                    "target": "<= 1 + one request", "met": tokens["max_in_any_60s"] <= tokens["allowed_max"],
                    "detail": f"{tokens['max_in_any_60s']} of {tokens['limit_per_min']} "
                              f"(+{tokens['tokens_per_request']}); most at once {tokens['max_in_flight']} "
                              f"of {tokens['max_concurrency']}"})
    traced = _load("tracing")
    if traced and "on" in traced.get("modes", {}) and "ratio_to_off_median" in traced["modes"]["on"]:
        modes = traced["modes"]
        on = modes["on"]["ratio_to_off_median"] - 1
        others = "; ".join(f"{mode}/off {figures['ratio_to_off_median']:.3f}" for mode, figures in modes.items()
                           if mode not in ("off", "on") and "ratio_to_off_median" in figures)
        out.append({"benchmark": "6 tracing: web+worker cpu on / off - 1", "figure": on, "target": "< 0.10",
                    "met": on < 0.10,
                    "detail": f"side by side, median of {len(traced['side_by_side'])} rounds; {others}; "
                              f"{modes['on']['spans_each']:.0f} spans each, {traced['span_cost_us']:.0f} us/span; "
                              f"off paths {traced['off_path_us_each']:.0f} us"})
    inflight = _load("inflight")
    if inflight:
        for row in inflight["rows"]:
            n = row["executions"]
            ok = row["completed"] == n and row["in_order"] == n
            rss = max(row["peak_rss_mb"].get(role, 0.0) for role in ("worker-llm (threads)", "worker (prefork)"))
            out.append({"benchmark": f"7 inflight: {n} LLM streams, peak in flight", "figure": row["peak_in_flight"],
                        "target": ">= 900 (1000)", "met": ok and (n < 1000 or row["peak_in_flight"] >= 900),
                        "detail": f"completed {row['completed']}, in order {row['in_order']}, "
                                  f"wall {row['wall_s']:.1f} s vs ideal {row['ideal_s']:.1f} s, rss {rss:.0f} MB"})
            out.append({"benchmark": f"7 inflight: {n} first delta p99 (ms)", "figure": row["first_delta_p99_ms"],
                        "target": "< 250 (1000)", "met": n < 1000 or row["first_delta_p99_ms"] < 250,
                        "detail": f"p50 {row['first_delta_p50_ms']:.0f} ms; pg connections peak "
                                  f"{row['pg_connections_peak']}; load {row['load_before']}"})
    loop = _load("tool_loop")
    if loop:
        last = loop["rows"][-1]
        out.append({"benchmark": "8 tools: 3-turn webhook loop / single turn", "figure": loop["ratio_median"],
                    "target": "-", "met": "",
                    "detail": f"loop {last['three_turn_loop_per_s']:.1f}/s vs single "
                              f"{last['single_turn_per_s']:.1f}/s; +{loop['added_ms_per_turn_p50']:.0f} ms per turn"})
    return out


def main() -> None:
    print(table(rows(), ["benchmark", "figure", "target", "met", "detail"]))


if __name__ == "__main__":
    main()
