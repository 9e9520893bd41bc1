"""What Ray and MLflow add: `sweep run hw2 --set seeds=N` against bare packed training of the same plan.

    python bench/overhead.py [--seeds 10]

The bare run trains exactly the Ray trials the sweep would plan for this machine (``plan_trials`` with one
slot per core), with the project's Trainer, in a process pool of one worker per core and one torch thread
each: no Ray, no MLflow, no checkpoints, no analysis. The sweep is timed from the command's start (Ray start
included) to its exit (figures written). Prints both wall times and the overhead in percent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _train(group: dict) -> float:
    import torch

    from sweep.plan import TrialGroup
    from sweep.trainer import Trainer

    torch.set_num_threads(1)
    trial = TrialGroup.from_dict(group)
    started = time.perf_counter()
    for _ in Trainer(trial.config, trial.seeds).run():
        pass
    return time.perf_counter() - started


def bare(seeds: int, cores: int) -> float:
    from sweep.plan import plan_trials
    from sweep.spec import load_spec

    spec, _ = load_spec("hw2", [f"seeds={seeds}"])
    groups = [g.to_dict() for g in plan_trials(spec, slots=cores)]
    started = time.perf_counter()
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_train, sorted(groups, key=lambda g: -g["config"]["C"])))  # longest first
    return time.perf_counter() - started


def swept(seeds: int) -> float:
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "sweep"), "run", "hw2", "--set", f"seeds={seeds}"],
                       cwd=folder, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    bare_s = bare(args.seeds, cores)
    sweep_s = swept(args.seeds)
    print(f"hw2 seeds={args.seeds} on {cores} cores: bare packed training {bare_s:.1f} s, "
          f"sweep run (Ray start to figures) {sweep_s:.1f} s, overhead {100 * (sweep_s / bare_s - 1):.1f}%")


if __name__ == "__main__":
    main()
