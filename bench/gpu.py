"""GPU benchmark of the packed update, op by op against replayed from a CUDA graph: one prepared script.

    python3 bench/gpu.py [--out bench/results] [--updates 300]   # ~2 minutes on one H200

Needs a CUDA device and only what models/ needs (torch, numpy, scikit-learn, pydantic, pyyaml, filelock): no
Ray, no MLflow, so it runs on an offline GPU machine too. It prints and writes (``--out``: gpu.md, gpu.json):

1. ms per SGD update per model, C in {1, 4, 64} x S in {1, 8, 32, 128} members trained together, each pack
   timed op by op (``Trainer(cuda_graph=False)``) and replayed from a CUDA graph (the default), over
   ``--updates`` updates after a first evaluation period of 50 (which holds the graph's warm-up and capture,
   reported apart, as ms for that period);
2. the plain PyTorch loop of one model on the GPU (bench/plain_loop.py: minibatch drawn on the host, the loss
   read back every update, as the handout's loop does), the S=1 target's reference;
3. how far the graph's records and weights are from the op-by-op ones after 400 updates (hw2's C=64 and
   C=4, packs of 8): float32 rounding is the bound;
4. tests/models/test_cuda_graph.py run by pytest (its CUDA tests are skipped on machines without a GPU).

Targets: S=1 replayed <= the plain loop's ms per update; S=128 <= 0.02 ms per model-update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from plain_loop import run_plain  # noqa: E402

from models.resnet.config import TrainConfig  # noqa: E402
from models.resnet.data import load_for_config  # noqa: E402
from models.resnet.trainer import Trainer, _Replayed  # noqa: E402

WIDTHS = (1, 4, 64)
PACKS = (1, 8, 32, 128)
FIRST_PERIOD = 50  # updates in the first evaluation period: warm-up and capture happen there


def time_pack(C: int, S: int, graph: bool, updates: int, data, device: str) -> dict[str, float]:
    """ms per update per model after the first period, and the first period's ms (warm-up, capture)."""
    config = TrainConfig(C=C, budget=FIRST_PERIOD + updates, eval_every=FIRST_PERIOD, device=device)
    trainer = Trainer(config, list(range(S)), data=data, cuda_graph=graph)
    periods = trainer.run()
    next(periods)
    first_seconds, first_updates = trainer.train_seconds, trainer.updates
    for _ in periods:
        pass
    ms = 1000 * (trainer.train_seconds - first_seconds) / ((trainer.updates - first_updates) * S)
    return {"ms_per_model_update": ms, "first_period_ms": 1000 * first_seconds}


def _train(C: int, S: int, updates: int, device: str, graph: bool) -> tuple[list, dict[str, torch.Tensor]]:
    config = TrainConfig(C=C, budget=updates, eval_every=updates, device=device)
    trainer = Trainer(config, list(range(S)), cuda_graph=graph)
    records = [r.values for e in trainer.run() for r in e.records]
    return records, {k: v.double().cpu() for k, v in trainer.model.state_dict().items()}


def _difference(a: tuple, b: tuple) -> dict[str, float]:
    """Largest train_error difference, and largest weight difference relative to its tensor's largest value."""
    (ra, sa), (rb, sb) = a, b
    return {"train_error": max(abs(x["train_error"] - y["train_error"]) for x, y in zip(ra, rb, strict=True)),
            "weights_rel": max(((sa[k] - sb[k]).abs().max() / sb[k].abs().max().clamp(min=1e-30)).item()
                               for k in sa)}


def agreement(C: int, S: int, updates: int, device: str) -> dict[str, dict[str, float]]:
    """The graph against op by op, beside op by op against itself: on CUDA some kernels sum with atomics (an
    index_add in the block convs' backward), so two op-by-op runs differ too, and training amplifies that."""
    graph, plain, again = (_train(C, S, updates, device, g) for g in (True, False, False))
    return {"graph vs op by op": _difference(graph, plain), "op by op vs op by op": _difference(again, plain)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--agreement-updates", type=int, nargs="+", default=[10, 400])
    parser.add_argument("--deterministic", action="store_true",
                        help="only the agreement, under torch.use_deterministic_algorithms, as JSON")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script (no graph on a CPU)")
    args = parser.parse_args()
    device = args.device
    if args.deterministic:  # a process of its own: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts
        torch.use_deterministic_algorithms(True)
        print(json.dumps({f"C={C} S=8, {n} updates": agreement(C, 8, n, device)
                          for C in (64, 4) for n in args.agreement_updates}))
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{device} (dry run)"
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {name}, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(head, flush=True)
    results: dict = {"head": head, "updates": args.updates, "agreement_updates": args.agreement_updates,
                     "plain": {}, "packed": {}, "agreement": {}}
    failures = []

    # Warm the process (CUDA context, cuBLAS) before anything is timed.
    time_pack(4, 8, True, 20, None, device)
    time_pack(4, 8, False, 20, None, device)
    for C in WIDTHS:
        try:
            run_plain(C, 0, 20, eval_every=20, device=device)
            plain = run_plain(C, 0, args.updates, eval_every=args.updates, device=device)["ms_per_update"]
            results["plain"][C] = plain
            print(f"plain loop C={C:>2}: {plain:.3f} ms per update", flush=True)
        except Exception:
            failures.append(f"plain C={C}: {traceback.format_exc()}")
            print(failures[-1], flush=True)
        data = load_for_config(TrainConfig(C=C, device=device))
        for S in PACKS:
            for graph in (False, True):
                name = f"C={C} S={S} {'graph' if graph else 'op by op'}"
                try:
                    cell = time_pack(C, S, graph, args.updates, data, device)
                except Exception:
                    failures.append(f"{name}: {traceback.format_exc()}")
                    print(failures[-1], flush=True)
                    continue
                results["packed"][f"{C},{S},{int(graph)}"] = cell
                print(f"{name:>24}: {cell['ms_per_model_update']:.4f} ms per model-update, "
                      f"{cell['ms_per_model_update'] * S:.3f} per packed update; first period "
                      f"{cell['first_period_ms']:.0f} ms", flush=True)

    for C in (64, 4):
        for n in args.agreement_updates:
            try:
                results["agreement"][f"C={C} S=8, {n} updates"] = found = agreement(C, 8, n, device)
                print(f"C={C} S=8, {n} updates: {found}", flush=True)
            except Exception:
                failures.append(f"agreement C={C}: {traceback.format_exc()}")
                print(failures[-1], flush=True)
    deterministic = subprocess.run(
        [sys.executable, __file__, "--deterministic", "--device", device, "--agreement-updates",
         str(args.agreement_updates[-1])], env={**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
        capture_output=True, text=True)
    if deterministic.returncode == 0:
        results["deterministic"] = json.loads(deterministic.stdout.strip().splitlines()[-1])
        print(f"with deterministic algorithms: {results['deterministic']}", flush=True)
    else:
        failures.append(f"deterministic agreement:\n{deterministic.stderr[-3000:]}")
        print(failures[-1], flush=True)

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
                            "tests/models/test_cuda_graph.py"], cwd=ROOT, capture_output=True, text=True)
    results["tests"] = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:]
    if tests.returncode:
        failures.append(f"tests/models/test_cuda_graph.py:\n{tests.stdout[-6000:]}\n{tests.stderr[-2000:]}")
        print(failures[-1], flush=True)

    markdown = table(results)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gpu.md").write_text(markdown + "\n")
    print("\n" + markdown)
    for failure in failures:
        print("FAILED:", failure.splitlines()[0])
    return 1 if failures else 0


def _pair(found: dict[str, float]) -> str:
    return f"{found['train_error']:.4f}; {found['weights_rel']:.1e}"


def table(results: dict) -> str:
    packed, plain = results["packed"], results["plain"]
    lines = [f"{results['head']}; ms per SGD update per model ({results['updates']} updates after a first "
             f"period of {FIRST_PERIOD}, evaluations excluded):", "",
             "| C | launched | plain loop | " + " | ".join(f"S={S}" for S in PACKS) + " |",
             "|---|---|---|" + "---|" * len(PACKS)]
    for C in WIDTHS:
        for graph in (0, 1):
            cells = [packed.get(f"{C},{S},{graph}", {}).get("ms_per_model_update") for S in PACKS]
            lines.append(f"| {C} | {'CUDA graph' if graph else 'op by op'} | "
                         + (f"{plain[C]:.3f}" if C in plain and not graph else "")
                         + " | " + " | ".join("failed" if v is None else f"{v:.4f}" for v in cells) + " |")
    firsts = [f"C={C} S={S}: {packed[f'{C},{S},1']['first_period_ms']:.0f} ms"
              for C in WIDTHS for S in (1, 128) if f"{C},{S},1" in packed]
    eager = _Replayed.WARMUP
    lines += ["", f"First period with the graph ({FIRST_PERIOD} updates: {eager} eager, then the capture and "
              f"{FIRST_PERIOD - eager} replays): " + ", ".join(firsts)]
    lines += ["", "Largest differences (train error; weights relative to each tensor's largest value):", "",
              "| run | graph vs op by op | op by op vs op by op |", "|---|---|---|"]
    deterministic = results.get("deterministic", {})
    rows = [*results["agreement"].items(),
            *((f"{name} with deterministic algorithms", found) for name, found in deterministic.items())]
    for name, found in rows:
        lines.append(f"| {name} | " + " | ".join(_pair(found[k]) for k in ("graph vs op by op", "op by op vs op by op"))
                     + " |")
    lines.append(f"\ntests/models/test_cuda_graph.py: {results.get('tests')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
