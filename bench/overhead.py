"""What Ray and MLflow add: `sweep run hw2 --set seeds=N` against bare packed training of the same plan.

    python bench/overhead.py [--seeds 10] [--repeats 1]

The bare run trains exactly the Ray trials the sweep would plan for this machine (``plan_trials`` with one
slot per core, longest first), with the project's Trainer, in a process pool of one worker per core and one
torch thread each: no Ray, no MLflow, no checkpoints, no analysis. Both are timed as whole commands, from
process start (imports included) to exit; the sweep's exit comes after its figures are written. With
``--repeats`` the two alternate, so a slow spell of a shared machine hits both; medians are compared.
"""

from __future__ import annotations

import argparse
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

    from sweep.plan import TrialGroup
    from sweep.trainer import Trainer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="alternating bare/sweep pairs")
    parser.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)  # the timed bare command
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    if args.bare_only:
        bare(args.seeds, cores)
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
