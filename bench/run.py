"""Benchmark: milliseconds per SGD update per model, plain loop vs the project's Trainer vs packing.

    python bench/run.py            # the per-update table (a few minutes at most on 2 cores)
    python bench/run.py --quick    # a fast sanity run
    python bench/run.py --sweep    # also: `sweep run hw2 --set seeds=10` end to end vs the plain loop over
                                   # the same 40 trials as one process per core (several minutes on 2 cores)
    python bench/run.py --sweep --repeats 3  # the two alternately, 3 times each: a ratio per adjacent pair
    python bench/run.py --epochs   # also: `sweep run hw2-epochs` end to end beside one of its runs (C=4,
                                   # 28,000 updates) in the plain loop (~10 minutes on 2 cores)
    python bench/run.py --pack-cost  # also: measure this machine's pack-cost table (models/resnet/pack_cost.py)
                                     # and cache it for the planner (~1 minute)

Every timing uses one torch thread. Per-update numbers are wall-clock time of the SGD updates only
(evaluations excluded), divided by updates and by the number of models trained together; each is measured
after a short warm-up run of the same configuration in the same process. The machine's load average is
recorded alongside, since other processes on a small machine move these numbers a lot.

Writes bench/results/bench.json and bench/results/bench.md and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import ceiling  # noqa: E402
from plain_loop import run_plain  # noqa: E402

from models.allocator import keep_freed_memory  # noqa: E402
from models.resnet import pack_cost  # noqa: E402
from models.resnet.config import TrainConfig  # noqa: E402
from models.resnet.trainer import Trainer  # noqa: E402

WIDTHS = (1, 4, 64)
PACKS = (1, 8, 32)


def pack_columns() -> tuple[int, ...]:
    """The pack sizes timed: PACKS and the planner's size for C=64 on this machine (the target's column)."""
    return tuple(sorted({*PACKS, planner_pack_size(64)[0]}))
# Updates per measurement: enough for a stable mean, small enough that the whole table takes ~2 minutes.
UPDATES = {1: 400, 4: 400, 64: 100}
QUICK_UPDATES = {1: 40, 4: 40, 64: 10}
WARMUP_UPDATES = 10
SWEEP_WIDTHS = (1, 2, 4, 64)
KINDS = {
    "train": "ms per SGD update per model, the updates alone (the Trainer's own ms_per_update; the plain "
    "loop's includes its random.sample)",
    "wall": "ms per update per model, wall clock of the whole run: minibatch drawing and one final "
    "evaluation included",
    "cpu": "the same span in this process's CPU time (wall much above cpu: the machine was busy)",
}


def _trainer_timings(C: int, seeds: list[int], packed: bool, updates: int) -> dict[str, float]:
    """The project's Trainer, ms per update per model: ``train`` is its own ``ms_per_update`` (the updates
    alone), ``wall`` and ``cpu`` span the whole ``run()``: minibatch drawing and one final evaluation too."""
    for budget in (WARMUP_UPDATES, updates):
        trainer = Trainer(TrainConfig(C=C, budget=budget, eval_every=budget), seeds=seeds, packed=packed)
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in trainer.run():
            pass
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    per = 1000.0 / (updates * len(seeds))
    return {"train": trainer.ms_per_update, "wall": wall * per, "cpu": cpu * per}


def per_update_table(quick: bool) -> list[dict]:
    """One row per C: {"C", "updates", "train": {column: ms}, "wall": {...}, "cpu": {...}, "ceiling": {...}}.

    The sgemm ceiling (bench/ceiling.py) is measured right before and right after each C's timings; its
    mean stands next to the packed timings, so a ratio compares two things measured minutes apart at most.
    """
    rows = []
    counts = QUICK_UPDATES if quick else UPDATES
    for C in WIDTHS:
        n = counts[C]
        before = ceiling.ceiling(C)
        run_plain(C, seed=0, updates=WARMUP_UPDATES, eval_every=WARMUP_UPDATES)
        plain = run_plain(C, seed=0, updates=n, eval_every=n)
        timings = {
            "plain loop": {
                "train": plain["ms_per_update"],
                "wall": 1000 * plain["seconds"] / n,
                "cpu": 1000 * plain["cpu_seconds"] / n,
            },
            "Trainer unpacked": _trainer_timings(C, [0], packed=False, updates=n),
        }
        for S in pack_columns():
            timings[f"packed S={S}"] = _trainer_timings(C, list(range(S)), packed=True, updates=n)
        after = ceiling.ceiling(C)
        row = {"C": C, "updates": n}
        for kind in KINDS:
            row[kind] = {column: t[kind] for column, t in timings.items()}
        ceiling_ms = (before["ceiling_ms"] + after["ceiling_ms"]) / 2
        flops = before["flops"]
        packs = pack_columns()
        row["ceiling"] = {
            "mflops_per_update": flops / 1e6,
            "ceiling_ms": ceiling_ms,
            "ceiling_gflops": flops / ceiling_ms / 1e6,
            "ceiling_gflops_before_after": [before["ceiling_gflops"], after["ceiling_gflops"]],
            "products_before": before["products"],
            "achieved_gflops": {f"packed S={S}": flops / row["train"][f"packed S={S}"] / 1e6 for S in packs},
            "ratio": {f"packed S={S}": ceiling_ms / row["train"][f"packed S={S}"] for S in packs},
        }
        rows.append(row)
        ceil = row["ceiling"]
        print(f"  C={C}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["train"].items()), flush=True)
        print(f"  C={C}: sgemm ceiling {ceil['ceiling_gflops']:.1f} GFLOP/s (before {before['ceiling_gflops']:.1f},"
              f" after {after['ceiling_gflops']:.1f}); achieved/ceiling: "
              + ", ".join(f"{k} {100 * v:.0f}%" for k, v in ceil["ratio"].items()), flush=True)
    return rows


def _sweep_command() -> list[str] | None:
    exe = Path(sys.executable).parent / "sweep"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("sweep")
    return [found] if found else None


def run_sweep(seeds: int | None, budget: int | None, preset: str = "hw2") -> dict:
    """Time `sweep run <preset> [--set seeds=N] [--set budget=B]` in a temporary folder with its own sqlite
    MLflow store."""
    cmd = _sweep_command()
    if cmd is None:
        return {"status": "unavailable", "reason": "no `sweep` command installed (run `make setup` first)"}
    help_run = subprocess.run([*cmd, "run", "--help"], capture_output=True, text=True)
    if help_run.returncode != 0:
        tail = (help_run.stderr or help_run.stdout).strip().splitlines()[-3:]
        reason = f"`sweep run --help` exits with code {help_run.returncode}: " + " | ".join(tail)
        return {"status": "unavailable", "reason": reason}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        work = Path(tmp)
        shown = ["sweep", "run", preset, *(["--set", f"seeds={seeds}"] if seeds is not None else [])]
        if budget is not None:
            shown += ["--set", f"budget={budget}"]
        store = ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--storage", str(work / "ray_results")]
        args = [*cmd, *shown[1:], *store, "--out", str(work / "figures")]
        env = dict(os.environ)
        for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # a fresh local Ray and this folder's store only
            env.pop(name, None)
        print("  $ " + " ".join(args[1:]), flush=True)
        started = time.perf_counter()
        marks: dict[str, float] = {}
        lines: list[str] = []
        with subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip())
                now = time.perf_counter() - started
                if line.startswith("[sweep]") and "sweep_started" not in marks:
                    marks["sweep_started"] = now
                if "Figures and report" in line:
                    marks["figures_written"] = now
        seconds = time.perf_counter() - started
        figures = sorted(p.name for p in (work / "figures").glob("*.png"))
        result = {
            "command": " ".join(shown),
            "returncode": proc.returncode,
            "seconds": seconds,
            "seconds_to_figures": marks.get("figures_written"),
            "seconds_to_sweep_created": marks.get("sweep_started"),
            "figures": figures,
        }
        if proc.returncode != 0 or not figures:
            result["status"] = "failed"
            result["output_tail"] = lines[-15:]
        else:
            result["status"] = "ok"
        return result


def _plain_trial(C: int, seed: int, updates: int) -> tuple[str, dict]:
    torch.set_num_threads(1)
    keep_freed_memory()  # the allocator the sweep's trainers get: the comparison is of the loops, not of malloc
    r = run_plain(C, seed, updates)
    return f"C={C} seed={seed}", {k: r[k] for k in ("train_error", "test_error", "seconds")}


def run_plain_trials(seeds: int, updates: int, processes: int = 2) -> dict:
    """The same trials as the sweep with the plain loop, as ``processes`` worker processes (one per core, one
    torch thread each) taking the trials widest first: the plain loop given the cores the sweep gets."""
    started = time.perf_counter()
    trials = [(C, seed) for C in sorted(SWEEP_WIDTHS, reverse=True) for seed in range(seeds)]
    final = {}
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as the sweep's workers are
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        for name, result in pool.map(_plain_trial, *zip(*[(C, s, updates) for C, s in trials], strict=True)):
            final[name] = result
    seconds = time.perf_counter() - started
    print(f"  plain loop: {len(final)} trials on {processes} processes in {seconds:.0f} s", flush=True)
    return {"seconds": seconds, "trials": len(final), "updates": updates, "processes": processes, "final": final}


def run_epochs(C: int = 4) -> dict:
    """`sweep run hw2-epochs` (the literal 4,000 epochs: 28,000 updates per run) end to end, then one of its
    runs, C=``C`` seed 0, in the plain loop (28,000 updates, alone on a core)."""
    sweep = run_sweep(None, None, preset="hw2-epochs")
    print(f"  hw2-epochs sweep: {sweep.get('seconds', float('nan')):.0f} s", flush=True)
    plain = run_plain(C, 0, 28_000)
    print(f"  plain loop C={C}, 28000 updates: {plain['seconds']:.0f} s", flush=True)
    return {"sweep": sweep, "plain": {"C": C, "updates": 28_000, "seconds": plain["seconds"],
                                      "ms_per_update": plain["ms_per_update"]}}


TARGET = 0.60  # issues 17 and 24: packed C=64 at >= 60% of the same-run sgemm rate


def planner_pack_size(C: int = 64) -> tuple[int, str]:
    """The pack size the planner prefers for width ``C`` on this machine (the cheapest member-update of its
    cost table, measured or default; a sweep's slots may split a grid point into smaller packs)."""
    costs, source = pack_cost.table()
    return min(pack_cost.SIZES, key=lambda S: (pack_cost.member_ms(C, S, costs), -S)), source


def _headline(rows: list[dict]) -> dict | None:
    """The issue's ratio: packed C=64 at the planner's pack size against the same-run sgemm ceiling (the best
    S >= 8 of the table when the planner's size is not one of its columns)."""
    row = next((r for r in rows if r["C"] == 64), None)
    if row is None:
        return None
    size, source = planner_pack_size(64)
    ratios = row["ceiling"]["ratio"]
    column = f"packed S={size}"
    if column not in ratios:
        column = max((k for k in ratios if int(k.split("=")[1]) >= 8), key=lambda k: ratios[k])
    met = ratios[column] >= TARGET
    line = (f"Packed C=64, {column} (the planner's pack size from the {source} cost table: S={size}): "
            f"{row['ceiling']['achieved_gflops'][column]:.1f} GFLOP/s = {100 * ratios[column]:.0f}% of this run's "
            f"sgemm ceiling ({row['ceiling']['ceiling_gflops']:.1f} GFLOP/s); target {100 * TARGET:.0f}%: "
            f"{'met' if met else 'not met'}.")
    return {"line": line, "met": met, "ratio": ratios[column], "column": column}


def markdown(rows: list[dict], sweep: list[dict] | None, meta: dict, account: dict | None = None,
             epochs: dict | None = None, costs: dict | None = None) -> str:
    packs = sorted(int(k.split("=")[1]) for k in rows[0]["ceiling"]["ratio"]) if rows else list(PACKS)
    cols = ["plain loop", "Trainer unpacked", *(f"packed S={S}" for S in packs)]
    quick = " (--quick: a sanity run, not numbers to quote)" if meta["quick"] else ""
    out = [
        f"{meta['date']}, {meta['cpu']}, torch {meta['torch']}, 1 torch thread, load average "
        f"{meta['load_before']:.1f} "
        f"before / {meta['load_after']:.1f} after{quick}",
    ]
    for kind, title in KINDS.items() if rows else ():
        out += [
            "",
            f"{title}:",
            "",
            "| C | updates timed | " + " | ".join(cols) + " | best speed-up vs plain |",
            "|---|---|" + "---|" * len(cols) + "---|",
        ]
        for r in rows:
            t = r[kind]
            best = min(t[c] for c in cols[1:])
            out.append(f"| {r['C']} | {r['updates']} | " + " | ".join(f"{t[c]:.3f}" for c in cols)
                       + f" | {t['plain loop'] / best:.1f}x |")
    if rows:
        out += ["", "Against this process's sgemm rate (torch.mm, float32, same threads) at the packed model's "
                "matmul shapes, measured just before and after each C's timings (bench/ceiling.py: counted "
                "FLOPs = the forward's products and the backward's weight and input gradients, per member-update):",
                "", "| C | MFLOP/update | ceiling GFLOP/s (before / after) | "
                + " | ".join(f"S={S} GFLOP/s (achieved/ceiling)" for S in packs) + " |",
                "|---|---|---|" + "---|" * len(packs)]
        for r in rows:
            c = r["ceiling"]
            b, a = c["ceiling_gflops_before_after"]
            out.append(f"| {r['C']} | {c['mflops_per_update']:.2f} | {c['ceiling_gflops']:.1f} ({b:.1f} / {a:.1f}) | "
                       + " | ".join(f"{c['achieved_gflops'][f'packed S={S}']:.1f} "
                                    f"({100 * c['ratio'][f'packed S={S}']:.0f}%)" for S in packs) + " |")
        headline = _headline(rows)
        if headline:
            out += ["", headline["line"]]
    if account is not None:
        out += [""] + ceiling.account_markdown(account, account["ceiling_ms"])
    if sweep is not None:
        out += ["", "End to end (seconds, wall clock):", ""] + end_to_end_markdown(sweep)
    if epochs is not None:
        s, p = epochs["sweep"], epochs["plain"]
        out += ["", "`sweep run hw2-epochs` (20 runs of 4,000 epochs = 28,000 updates) end to end, beside one of its "
                "runs in the plain loop:", ""]
        out.append(sweep_line(s, "sweep run hw2-epochs"))
        out.append(f"- plain loop, C={p['C']} seed 0, {p['updates']} updates (one of the sweep's 20 runs): "
                   f"{p['seconds']:.0f} s ({p['ms_per_update']:.2f} ms per update)")
    if costs is not None:
        out += ["", f"Pack-cost table (ms per member-update, the trainer's own, best of 3; cached for the planner, "
                f"{pack_cost.machine_key()}):", "", pack_cost.markdown(costs)]
    return "\n".join(out) + "\n"


def sweep_line(timed: dict, what: str) -> str:
    """One timed `sweep run` (:func:`run_sweep`) as a markdown bullet; ``what`` names it when it did not run."""
    if timed.get("status") != "ok":
        return f"- `{what}`: {timed.get('status')}: {timed.get('reason', 'see bench.json output_tail')}"
    return (f"- `{timed['command']}`: {timed['seconds']:.0f} s to exit, figures written at "
            f"{timed['seconds_to_figures'] or float('nan'):.0f} s ({len(timed['figures'])} figures)")


def end_to_end_markdown(pairs: list[dict]) -> list[str]:
    """The sweep against the plain loop, pair by pair (timed one after the other), with each pair's speed-up
    and, over several pairs, their median: a ratio within one pair, whose two halves are minutes apart,
    is less at the mercy of a drifting machine than two numbers from different runs."""
    out, ratios = [], []
    indent = "  " if len(pairs) > 1 else ""
    for i, pair in enumerate(pairs, start=1):
        s, p = pair["sweep"], pair["plain"]
        if indent:
            out.append(f"- pair {i}:")
        out.append(indent + sweep_line(s, "sweep run"))
        out.append(f"{indent}- plain loop, {p['trials']} trials of {p['updates']} updates as {p['processes']} "
                   f"processes (one per core): {p['seconds']:.0f} s")
        if s.get("status") == "ok":
            ratios.append(p["seconds"] / s["seconds"])
            out.append(f"{indent}- speed-up: {ratios[-1]:.1f}x")
    if len(ratios) > 1:
        out.append(f"- speed-up over {len(ratios)} pairs: median {statistics.median(ratios):.1f}x "
                   f"(range {min(ratios):.1f}-{max(ratios):.1f}x)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few updates: a sanity run, not for quoting")
    parser.add_argument("--sweep", action="store_true",
                        help="also time `sweep run hw2 --set seeds=10` against the plain loop (long)")
    parser.add_argument("--epochs", action="store_true",
                        help="also time `sweep run hw2-epochs` beside one of its runs in the plain loop (long)")
    parser.add_argument("--pack-cost", action="store_true",
                        help="also measure and cache this machine's pack-cost table for the planner")
    parser.add_argument("--repeats", type=int, default=1,
                        help="with --sweep: time the sweep and the plain loop this many times each, alternately")
    parser.add_argument("--no-table", action="store_true", help="skip the per-update table (with --sweep etc.)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    torch.set_num_threads(1)
    # Every timing below with the allocator settings the Trainer makes (models/allocator.py), the plain loop's too,
    # whichever column runs first in this process.
    keep_freed_memory()
    meta = {
        "cpu": f"{os.cpu_count()} cores, {pack_cost.cpu_model()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "load_before": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    started = time.perf_counter()
    # First: the sweeps below plan with the table measured here (and the headline names its pack size).
    costs = pack_cost.measure(seconds=0.1 if args.quick else 0.4, save=not args.quick) if args.pack_cost else None
    if costs is not None:
        print(pack_cost.markdown(costs), flush=True)
    rows = [] if args.no_table else per_update_table(args.quick)
    account = None
    headline = _headline(rows)
    if headline is not None:
        print("  " + headline["line"], flush=True)
        if not headline["met"]:  # a measured account of where the rest goes
            row = next(r for r in rows if r["C"] == 64)
            account = ceiling.account(64, planner_pack_size(64)[0], 20 if args.quick else 60,
                                      row["ceiling"]["ceiling_ms"])
            account["ceiling_ms"] = row["ceiling"]["ceiling_ms"]
    sweep = None
    if args.sweep:
        seeds, budget = (2, 200) if args.quick else (10, None)
        sweep = []
        for _ in range(max(1, args.repeats)):
            timed = run_sweep(seeds, budget)
            if timed["status"] == "unavailable":
                print(f"  sweep run skipped: {timed['reason']}", flush=True)
            sweep.append({"sweep": timed, "plain": run_plain_trials(seeds, budget or 4000)})
    epochs = run_epochs() if args.epochs and not args.quick else None
    meta["load_after"] = os.getloadavg()[0]
    meta["seconds"] = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "per_update_ms": rows, "ceiling_account": account, "end_to_end": sweep,
              "hw2_epochs": epochs, "pack_cost_ms": costs}
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows, sweep, meta, account, epochs, costs)
    (args.out / "bench.md").write_text(table)
    print()
    print(table)
    print(f"({meta['seconds']:.0f} s; written to {args.out}/bench.json and bench.md)")


if __name__ == "__main__":
    main()
