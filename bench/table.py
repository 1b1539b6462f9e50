"""Render bench/results/latest.json as the Markdown tables the README shows.

    python bench/table.py [FILE]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def ms(v):
    return "-" if v is None else f"{v * 1000:.1f} ms"


def floor(m: dict) -> str:
    """The raw round trip measured in the same run, if it was."""
    if m.get("pgfault_push_raw_rtt_p50_ms") is None:
        return ""
    return (f"; raw 4 KiB round trip between two processes p50/p99 "
            f"{m['pgfault_push_raw_rtt_p50_ms']:.2f}/{m['pgfault_push_raw_rtt_p99_ms']:.2f} ms")


def render(r: dict) -> str:
    out = ["| core (M guest instructions/s) | interpreter | block translator | Unicorn | "
           "translator / Unicorn |", "|---|---|---|---|---|"]
    for c in r["cpu"]:
        uc = c["unicorn_mips"]
        out.append(f"| {c['program']} | {c['interp_mips']:.2f} | {c['blocks_mips']:.2f} | "
                   f"{'-' if uc is None else f'{uc:.0f}'} | "
                   f"{'-' if uc is None else '1/%.0f' % (uc / c['blocks_mips'])} |")
    out += ["", "| process | save | raw write | load | raw read | normal migration | raw TCP |",
            "|---|---|---|---|---|---|---|"]
    for m in r["migration"]:
        out.append(
            f"| {m['size_mib']} MiB | {m['save_mib_s']:.0f} MiB/s "
            f"({m['save_mib_s'] / m['raw_write_mib_s']:.0%}) | {m['raw_write_mib_s']:.0f} | "
            f"{m['load_mib_s']:.0f} ({m['load_mib_s'] / m['raw_read_mib_s']:.0%}) | "
            f"{m['raw_read_mib_s']:.0f} | {m['normal_mib_s']:.0f} "
            f"({m['normal_mib_s'] / m['raw_stream_mib_s']:.0%}) | {m['raw_stream_mib_s']:.0f} |")
    out += ["", "| process | method | downtime (pause to runnable) | vs normal | total | notes |",
            "|---|---|---|---|---|---|"]

    def vs(m, key):
        return f"1/{m['normal_downtime_s'] / m[key]:.0f}" if m[key] else "-"
    for m in r["migration"]:
        s = f"{m['size_mib']} MiB"
        out.append(f"| {s} | normal | {ms(m['normal_downtime_s'])} | 1/1 | "
                   f"{ms(m['normal_downtime_s'])} | |")
        out.append(f"| {s} | pgfault | {ms(m['pgfault_push_to_runnable_s'])} | "
                   f"{vs(m, 'pgfault_push_to_runnable_s')} | "
                   f"{m['pgfault_push_until_release_s']:.2f} s until release (push) | fault "
                   f"latency p50/p99 {m['pgfault_nopush_fault_p50_ms']:.2f}/"
                   f"{m['pgfault_nopush_fault_p99_ms']:.2f} ms without push, "
                   f"{m['pgfault_push_fault_p50_ms']:.2f}/{m['pgfault_push_fault_p99_ms']:.2f} "
                   f"ms with push ({m['pgfault_push_faults']} faults){floor(m)} |")
        out.append(f"| {s} | precopy | {ms(m['precopy_downtime_s'])} | "
                   f"{vs(m, 'precopy_downtime_s')} | {ms(m['precopy_total_s'])} "
                   f"| {m['precopy_rounds']} round(s) |")
        out.append(f"| {s} | precopy, then pgfault | {ms(m['hybrid_downtime_s'])} | "
                   f"{vs(m, 'hybrid_downtime_s')} | {ms(m['hybrid_total_s'])} | "
                   f"{m['hybrid_postcopy_pages']} pages left to demand paging |")
    w = r.get("rewrite_all")
    if w:
        out.append(f"| 16 MiB, every page rewritten each pass | precopy | "
                   f"{ms(w['precopy_downtime_s'])} | "
                   f"1/{w['normal_downtime_s'] / w['precopy_downtime_s']:.0f} | "
                   f"{ms(w['precopy_total_s'])} | {w['precopy_rounds']} round(s), "
                   f"{w['precopy_final_pages']} page(s) in the stop phase; normal: "
                   f"{ms(w['normal_downtime_s'])} |")
    sc = r.get("scale")
    if sc:
        f = sc["full_node"]
        out += ["", "| scale (one machine) | |", "|---|---|",
                f"| nodes | {sc['nodes']} |",
                f"| envs on one node, `ps` p50/p99 | {f['envs']}, "
                f"{f['ps_p50_ms']:.0f}/{f['ps_p99_ms']:.0f} ms |",
                f"| migrations at once (all methods) | {sc['migrations']}: {sc['failures']} "
                f"failed, {sc['verified']} memtests verified where they arrived, "
                f"{sc['mismatches']} mismatches, {sc['wall_s']:.1f} s |",
                f"| `ps` on a busy node meanwhile, p50/p99 | "
                f"{sc['busy_ps_p50_ms']:.0f}/{sc['busy_ps_p99_ms']:.0f} ms |",
                f"| node RSS idle / peak | {min(sc['rss_idle_mib']):.0f}-"
                f"{max(sc['rss_idle_mib']):.0f} / {min(sc['rss_peak_mib']):.0f}-"
                f"{max(sc['rss_peak_mib']):.0f} MiB |"]
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else
                Path(__file__).parent / "results" / "latest.json")
    print(render(json.loads(path.read_text())))
