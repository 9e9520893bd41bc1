"""What `sweep run` costs besides training: its fixed part, the in-trial share, and (--compare) bare training.

    python bench/overhead.py [--preset hw2|hw2-epochs] [--set KEY=VALUE ...]   # the split (default)
    python bench/overhead.py --compare [--seeds 10] [--repeats 1]              # sweep vs bare packed training

The split runs ``sweep run PRESET --set ...`` once in a temporary folder (its own sqlite MLflow store and
Ray results) and divides its wall clock, process start to exit, with marks the sweep records anyway:

* fixed part: process start to the first trial's first update (``training_started_unix``, which the
  trainable reports with every result), plus the last update (the latest trial's last ``yielded_unix``:
  the moment the trainer handed over its final evaluation) to process exit, analysis and figures included;
* trial time: per Ray trial, from its first update to its MLflow runs' end time (the final flush, weights
  and run ends included); of it, ``seconds_in_trainer`` is updates and evaluations, and the rest
  (logging, reporting, checkpoints) is the in-trial share;
* the remainder of the span between first and last update is slot time no trial used (trial hand-overs,
  and the last trials' imbalance), shown for completeness.

Targets (issue 17): fixed part <= 15 s on 2 cores; in-trial share <= 5% of trial time.

--compare: the bare run trains exactly the Ray trials the sweep would plan for this machine (``plan_trials`` with one
slot per core, longest first), with the project's Trainer, in a process pool of one worker per core and one
torch thread each: no Ray, no MLflow, no checkpoints, no analysis. Both are timed as whole commands, from
process start (imports included) to exit; the sweep's exit comes after its figures are written. With
``--repeats`` the two alternate, so a slow spell of a shared machine hits both; medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _train(group: dict) -> None:
    import torch

    from models.resnet.trainer import Trainer
    from sweep.plan import TrialGroup

    torch.set_num_threads(1)
    trial = TrialGroup.from_dict(group)
    for _ in Trainer(trial.config, trial.seeds).run():
        pass


def bare(seeds: int, cores: int) -> None:
    from sweep.plan import plan_trials
    from sweep.spec import load_spec

    spec, _ = load_spec("hw2", [f"seeds={seeds}"])
    groups = [g.to_dict() for g in plan_trials(spec, slots=cores)]  # most expensive first
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_train, groups))


def timed(command: list[str]) -> float:
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        started = time.perf_counter()
        subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def _final_results(trial_dir: Path) -> dict | None:
    """The last result line Ray Tune wrote for one trial (None if it reported nothing)."""
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def split(preset: str, overrides: list[str]) -> dict:
    """Run ``sweep run`` once and split its wall clock (module docstring); returns the marks in seconds."""
    from mlflow import MlflowClient

    from record import TAG_TUNE_TRIAL, find_parent_run, sweep_runs, tag_equals

    def runs_experiment(client: MlflowClient, sweep_id: str) -> str:
        return find_parent_run(client, sweep_id).info.experiment_id

    sweep_exe = str(Path(sys.executable).parent / "sweep")
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        work = Path(folder)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        sets = [a for o in overrides for a in ("--set", o)]
        command = [sweep_exe, "run", preset, *sets, "--tracking-uri", uri, "--storage", str(work / "ray"),
                   "--out", str(work / "figures")]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env["PYTHONUNBUFFERED"] = "1"  # its lines must arrive when printed: they are marks
        marks: dict[str, float] = {}  # when the sweep's own output said: parent run made, figures written
        lines: list[str] = []
        started = time.time()
        with subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("[sweep]") and "created" not in marks:
                    marks["created"] = time.time()
                if "Figures and report" in line:
                    marks["figures"] = time.time()
        exited = time.time()
        if proc.returncode != 0:
            raise SystemExit(f"sweep run failed ({proc.returncode}):\n" + "".join(lines)[-3000:])
        sweep_id = next(line.split()[1].rstrip(":") for line in lines if line.startswith("[sweep]"))
        client = MlflowClient(uri)
        trials = []
        for trial_dir in sorted((work / "ray" / sweep_id).glob("trial_*")):
            result = _final_results(trial_dir)
            if result is None or "training_started_unix" not in result:
                continue
            trial_id = trial_dir.name.removeprefix("trial_")  # the runs a trial made carry its id
            runs = sweep_runs(client, runs_experiment(client, sweep_id), sweep_id, tag_equals(TAG_TUNE_TRIAL, trial_id))
            ends = [r.info.end_time for r in runs]
            end = max(e for e in ends if e) / 1000
            group = result["config"]["group"]
            trials.append({"trial": f"C={group['config'].get('C', '?')} seeds={len(group['seeds'])}",
                           "start": result["training_started_unix"], "last_update": result["yielded_unix"],
                           "end": end, "in_trainer": result["seconds_in_trainer"],
                           "logging": result["seconds_logging"], "reporting": result["seconds_reporting"]})
    first, last = min(t["start"] for t in trials), max(t["last_update"] for t in trials)
    trial_s = sum(t["end"] - t["start"] for t in trials)
    in_trainer = sum(t["in_trainer"] for t in trials)
    cores = os.cpu_count() or 1
    return {
        "command": " ".join(["sweep", "run", preset, *sets]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "load_average_after": os.getloadavg()[0], "cores": cores, "trials": len(trials),
        "total_s": exited - started,
        "fixed_start_s": first - started,
        "start_to_runs_created_s": marks["created"] - started,  # imports, Ray start, the parent run created
        "last_update_to_figures_s": marks.get("figures", exited) - last,  # Tune's end, finish_sweep, analysis
        "fixed_end_s": exited - last,
        "fixed_s": (first - started) + (exited - last),
        "span_s": last - first,
        "trial_s": trial_s,
        "in_trainer_s": in_trainer,
        "in_trial_other_s": trial_s - in_trainer,
        "in_trial_share": (trial_s - in_trainer) / trial_s,
        "mlflow_logging_s": sum(t["logging"] for t in trials),
        "tune_reports_s": sum(t["reporting"] for t in trials),  # reports and checkpoints before the last
        "idle_slot_s": cores * (last - first) - trial_s,
        # each trial, from the first update of the sweep: when it began training, how long it ran, where
        "per_trial": [{"trial": t["trial"], "start_s": round(t["start"] - first, 1),
                       "trial_s": round(t["end"] - t["start"], 1), "in_trainer_s": round(t["in_trainer"], 1),
                       "logging_s": round(t["logging"], 1)} for t in sorted(trials, key=lambda t: t["start"])],
    }


def split_markdown(r: dict) -> str:
    return "\n".join([
        f"`{r['command']}`, {r['date']}, {r['cores']} cores, load average {r['load_average_after']:.1f} after, "
        f"{r['trials']} Ray trials:",
        "",
        f"- total, process start to exit: {r['total_s']:.1f} s",
        f"- fixed part: {r['fixed_s']:.1f} s = {r['fixed_start_s']:.1f} s from process start to the first "
        f"update + {r['fixed_end_s']:.1f} s from the last update to exit (analysis included); target <= 15 s: "
        f"{'met' if r['fixed_s'] <= 15 else 'not met'}",
        f"  - start: {r['start_to_runs_created_s']:.1f} s to the `[sweep]` line (imports, Ray's start, the MLflow "
        f"parent run), then {r['fixed_start_s'] - r['start_to_runs_created_s']:.1f} s to the first update "
        "(Tune's start, trial workers importing torch/Ray/MLflow, each trial making its runs, trial set-up)",
        f"  - end: {r['last_update_to_figures_s']:.1f} s from the last update to figures written (final "
        f"reports, Tune's end, runs ended, analysis), then {r['fixed_end_s'] - r['last_update_to_figures_s']:.1f}"
        " s to exit (Ray's shutdown)",
        f"- trial time (summed over trials): {r['trial_s']:.1f} s, of which in the trainer (updates and "
        f"evaluations) {r['in_trainer_s']:.1f} s and logging/reporting/checkpoints {r['in_trial_other_s']:.1f} s "
        f"(MLflow calls {r['mlflow_logging_s']:.1f} s, Tune reports and checkpoints before each trial's last "
        f"{r['tune_reports_s']:.1f} s): in-trial share {100 * r['in_trial_share']:.1f}%; "
        f"target <= 5%: {'met' if r['in_trial_share'] <= 0.05 else 'not met'}",
        f"- slot time no trial used between first and last update: {r['idle_slot_s']:.1f} s "
        f"(of {r['cores']} x {r['span_s']:.1f} s)",
        "- trials, from the first update: " + "; ".join(
            f"{t['trial']} at {t['start_s']:.1f} s for {t['trial_s']:.1f} s ({t['in_trainer_s']:.1f} in the trainer, "
            f"{t['logging_s']:.1f} logging)" for t in r.get("per_trial", [])),
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hw2", help="preset to split (hw2 or hw2-epochs; default hw2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for the split run, e.g. --set budget=400 --set seeds=2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--compare", action="store_true", help="sweep run hw2 against bare packed training")
    parser.add_argument("--seeds", type=int, default=10, help="--compare: seeds")
    parser.add_argument("--repeats", type=int, default=1, help="--compare: alternating bare/sweep pairs")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)  # the timed bare command
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.bare_only:
        bare(args.seeds, cores)
        return
    if not args.compare:
        result = split(args.preset, args.overrides)
        text = split_markdown(result)
        print(text)
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"overhead-{args.preset}"
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(text)
        return
    bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-only", "--seeds", str(args.seeds)]
    sweep_cmd = [str(Path(sys.executable).parent / "sweep"), "run", "hw2", "--set", f"seeds={args.seeds}"]
    bare_s, sweep_s = [], []
    for i in range(args.repeats):
        bare_s.append(timed(bare_cmd))
        sweep_s.append(timed(sweep_cmd))
        print(f"pair {i + 1}: bare {bare_s[-1]:.1f} s, sweep {sweep_s[-1]:.1f} s", flush=True)
    b, w = statistics.median(bare_s), statistics.median(sweep_s)
    print(f"hw2 seeds={args.seeds} on {cores} cores, median of {args.repeats}: bare packed training {b:.1f} s, "
          f"sweep run (Ray start to figures) {w:.1f} s, overhead {100 * (w / b - 1):.1f}%")


if __name__ == "__main__":
    main()
