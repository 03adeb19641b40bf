"""The benchmark table: every stage's result JSON at each size in one table, tether against TRL (or `generate`).

    .venv/bin/python benchmarks/table.py [--results-dir benchmarks/results] [--sizes 5m,30m]

Reads the files the bench_*.py scripts write (run_all.py runs them all, then this) and writes table.json and
table.md beside them, then prints the markdown. One headline row per (stage, size), and extra rows where a result
holds more: RM on rated data (repeated ratings of a pair share their sequences in tether), DPO with TRL's reference
precomputed and with tether's precompute amortised over an epoch, PPO with tether's default value head, the rollout
with a static cache. A missing file gives a "not run" row. Per row: the rate on each side, their ratio, the issue's
target for it (issue 8: >= 2x for SFT, RM and DPO; >= 3x for PPO, GRPO, RLOO and the rollout against `generate`),
MFU and peak RSS of each side, the fp32 matmul peak measured in the same run, and the source file; per source file
its date, step counts and versions.

Results written before `--size` existed in bench_rm.py and bench_dpo.py (rm-<data>.json, dpo.json) and
bench_rollout.py's `--out` list (rollout.json) are read as well; the first two were always the 5m model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import RESULTS, SIZES

# issue 8's targets: tether's rate / the other side's
TARGETS = {"SFT": 2.0, "RM": 2.0, "DPO": 2.0, "PPO": 3.0, "GRPO": 3.0, "RLOO": 3.0, "rollout": 3.0}
COLUMNS = ["stage", "size", "metric", "tether", "other", "vs", "ratio", "target", "status", "tether MFU",
           "other MFU", "tether peak RSS MB", "other peak RSS MB", "matmul peak GFLOP/s", "source"]


# ---------------------------------------------------------------------------------------------
# Finding and reading result files


def candidates(stage: str, size: str) -> list[str]:
    """Result files that may hold `stage` at `size`, newest naming first."""
    legacy_5m = size == "5m"
    names = {
        "SFT": [f"sft-{size}.json"],
        "RM": [f"rm-unique-{size}.json"] + (["rm-unique.json"] if legacy_5m else []),
        "RM rated": [f"rm-rated-{size}.json"] + (["rm-rated.json"] if legacy_5m else []),
        "DPO": [f"dpo-{size}.json"] + (["dpo.json"] if legacy_5m else []),
        "PPO": [f"online-ppo-{size}.json"],
        "GRPO": [f"online-grpo-{size}.json"],
        "RLOO": [f"online-rloo-{size}.json"],
        "rollout": [f"rollout-{size}.json", "rollout.json"],
    }
    return names[stage]


def load(folder: Path, stage: str, size: str) -> tuple[dict | None, Path | None]:
    """The first result of `stage` at `size` found in `folder` and its path, or (None, None).

    rollout.json (bench_rollout.py's `--out`) is a list with one entry per size; the entry for `size` is taken.
    """
    for name in candidates(stage, size):
        path = folder / name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        if isinstance(data, list):
            data = next((d for d in data if d.get("size") == size), None)
            if data is None:
                continue
        if data.get("size", size) != size:
            continue
        return data, path
    return None, None


# ---------------------------------------------------------------------------------------------
# Rows: per stage, a function from its result JSON to rows (headline first)


def row(metric: str, t: dict, o: dict, key: str, vs: str, mfu: str | None = "mfu", ratio: float | None = None) -> dict:
    """One row: tether side `t` against side `o` on `key` (the ratio t/o unless given)."""
    return {"metric": metric, "tether": t[key], "other": o[key], "vs": vs,
            "ratio": ratio if ratio is not None else t[key] / o[key],
            "tether MFU": t.get(mfu) if mfu else None, "other MFU": o.get(mfu) if mfu else None,
            "tether peak RSS MB": t.get("peak_rss_mb"), "other peak RSS MB": o.get("peak_rss_mb")}


def trl(data: dict) -> str:
    return f"TRL {data['versions']['trl']}"


def sft_rows(data: dict) -> list[dict]:
    return [row("tokens/s (non-pad)", data["tether"], data["trl"], "tokens_per_s", trl(data))]


def rm_rows(data: dict) -> list[dict]:
    return [row("pairs/s (unique pairs)", data["tether"], data["trl"], "pairs_per_s", trl(data))]


def rm_rated_rows(data: dict) -> list[dict]:
    return [row("pairs/s (rated: 3 ratings per pair)", data["tether"], data["trl"], "pairs_per_s", trl(data))]


def dpo_rows(data: dict) -> list[dict]:
    s = data["sides"]
    rows = [row("pairs/s (steady)", s["tether"], s["trl"], "pairs_per_s", trl(data))]
    if "trl-precompute" in s:
        rows.append(row("pairs/s (steady) vs TRL precompute_ref_log_probs", s["tether"], s["trl-precompute"],
                        "pairs_per_s", trl(data) + " precompute"))
    rows.append(row("pairs/s amortised over one epoch (reference precompute included)", s["tether"], s["trl"],
                    "amortised_pairs_per_s", trl(data)))
    return rows


def online_rows(unit: str) -> Callable[[dict], list[dict]]:
    """Rows of an online RL result: the CPU-time rate (bench_online.py's headline), MFU on CPU time."""
    def rows(data: dict) -> list[dict]:
        s = data["sides"]
        critic = " (separate critic, as TRL)" if "tether-head" in s else ""
        out = [row(f"{unit}/s, CPU time{critic}", s["tether"], s["trl"], "rate_cpu", trl(data), "mfu_cpu")]
        if "tether-head" in s:
            out.append(row(f"{unit}/s, CPU time (tether's default value head)", s["tether-head"], s["trl"],
                           "rate_cpu", trl(data), "mfu_cpu"))
        return out
    return rows


def rollout_rows(data: dict) -> list[dict]:
    """tether's `sample` against HF `generate`; the ratio is the bench's median of same-round ratios."""
    transformers = data.get("versions", {}).get("transformers")
    s, vs = data["sides"], "HF generate" + (f" (transformers {transformers})" if transformers else "")
    return [row(f"rollout tokens/s ({cache} cache)", s[f"sample-{cache}"], s["generate"], "tokens_per_s", vs,
                ratio=s[f"sample-{cache}"]["vs_generate"]) for cache in ("dynamic", "static")]


# stage -> its results (a key of `candidates`, its rows); the first is the headline (a "not run" row when missing),
# the others are extras shown only when present.
STAGES: dict[str, list[tuple[str, Callable[[dict], list[dict]]]]] = {
    "SFT": [("SFT", sft_rows)], "RM": [("RM", rm_rows), ("RM rated", rm_rated_rows)], "DPO": [("DPO", dpo_rows)],
    "PPO": [("PPO", online_rows("episodes"))], "GRPO": [("GRPO", online_rows("completions"))],
    "RLOO": [("RLOO", online_rows("completions"))], "rollout": [("rollout", rollout_rows)],
}


# ---------------------------------------------------------------------------------------------
# The table


def source(data: dict, path: Path, folder: Path) -> dict:
    """What the table says about one result file: its date, step counts, versions and load warnings."""
    rounds = data.get("rounds")
    if isinstance(rounds, dict):  # bench_sft/rm/dpo keep per-round summaries under "rounds"
        rounds = len(next(iter(rounds.values())))
    date = data.get("date") or time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)) + " (file)"
    versions = dict(data.get("versions", {}))
    if "tether_version" in data:
        versions.setdefault("tether", data["tether_version"])
    busy = [n for n in data.get("differences", []) if n.startswith("machine busy")]
    return {"file": str(path.relative_to(folder)), "date": date, "steps": data.get("steps"),
            "warmup": data.get("warmup"), "rounds": rounds, "parameters": data.get("parameters"),
            "peak_flops": data.get("peak_flops"), "versions": versions, "notes": busy}


def build(folder: Path, sizes: list[str]) -> dict:
    """Rows and sources for every stage at every size found in `folder`."""
    rows, sources = [], {}
    for stage, parts in STAGES.items():
        target = TARGETS[stage]
        for size in sizes:
            for i, (key, make_rows) in enumerate(parts):
                data, path = load(folder, key, size)
                if data is None:
                    if i == 0:
                        rows.append({"stage": stage, "size": size, "metric": "not run", "target": target,
                                     "status": "not run", "source": candidates(key, size)[0]})
                    continue
                src = source(data, path, folder)
                sources[src["file"]] = src
                for r in make_rows(data):
                    status = "met" if r["ratio"] >= target else "missed"
                    rows.append({"stage": stage, "size": size, **r, "target": target, "status": status,
                                 "matmul peak GFLOP/s": src["peak_flops"] and src["peak_flops"] / 1e9,
                                 "source": src["file"]})
    return {"generated": time.strftime("%Y-%m-%d %H:%M"), "results_dir": str(folder), "targets": TARGETS,
            "rows": rows, "sources": list(sources.values())}


def cell(column: str, value) -> str:
    """A value as the markdown table shows it."""
    if value is None:
        return "-"
    if column in ("tether MFU", "other MFU"):
        return f"{100 * value:.1f}%"
    if column in ("ratio", "target"):
        return f"{value:.2f}x" if column == "ratio" else f">= {value:g}x"
    if column == "parameters":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(table: dict) -> str:
    """table.md: the rows, then one line per source file."""
    header = [c.replace("other", "TRL / generate") if c.startswith("other") else c for c in COLUMNS]
    lines = [f"# tether vs TRL benchmarks ({table['generated']}, from {table['results_dir']})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in COLUMNS) + " |" for r in table["rows"]]
    lines += ["", "Rates are medians of per-step (online RL: per-step CPU-time; rollout: per-round) rates of each "
              "side's best round, measured in one run per file; ratio = tether / other side. MFU: model FLOPs per "
              "second over the fp32 matmul peak (2048x2048, one process, the same threads) measured in that run.",
              "", "## Sources", "",
              "| file | date | steps (warm-up) | rounds | parameters | versions | notes |", "|---|---|---|---|---|---|---|"]
    for s in table["sources"]:
        steps = "-" if s["steps"] is None else f"{s['steps']} ({s['warmup']})"
        versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items()) or "-"
        lines.append(f"| {s['file']} | {s['date']} | {steps} | {cell('', s['rounds'])} | "
                     f"{cell('parameters', s['parameters'])} | {versions} | {'; '.join(s['notes']) or '-'} |")
    return "\n".join(lines) + "\n"


def write(folder: Path, sizes: list[str]) -> str:
    """Build the table from `folder`, write table.json and table.md there, and return the markdown."""
    table = build(folder, sizes)
    text = markdown(table)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.json").write_text(json.dumps(table, indent=1))
    (folder / "table.md").write_text(text)
    return text


def parse_sizes(text: str) -> list[str]:
    """"5m,30m" or "5m 30m" -> ["5m", "30m"], each checked against common.SIZES."""
    sizes = text.replace(",", " ").split()
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        sys.exit(f"sizes {unknown or text!r}: choose from {', '.join(SIZES)}")
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description="tether vs TRL: one table from the benchmark result files")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the result JSONs (and the table)")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma- or space-separated, from {', '.join(SIZES)}")
    args = p.parse_args()
    text = write(args.results_dir, parse_sizes(args.sizes))
    print(text)
    print(f"wrote {args.results_dir / 'table.md'} and table.json", file=sys.stderr)


if __name__ == "__main__":
    main()
