"""What a packed ResNet update costs per member at a few pack sizes, on this machine: the planner's cost table.

A member's cost depends on the pack size S and the CPU, and not always monotonically: at C=64 on the 2-core
AVX-512 Xeon a pack of 8 cost less per member than a pack of 32 in one run (the (S, C, 16, N) stem output of
32 members leaves the cache) and slightly more in another, while at C <= 4 bigger packs keep getting cheaper
(per-op overhead shared by more members). So :func:`sweep.plan.plan_trials` asks
:meth:`models.resnet.family.ResNetFamily.pack_cost`, which reads this table, what each pack size costs.

The table, ``{C: {S: ms per member-update}}``, comes from one of two places:

* a measurement on this machine (:func:`measure`, run by ``python -m models.resnet.pack_cost`` or
  ``make bench``), cached in ``pack_cost.json`` under ``$COMPLEXITY_SWEEP_CACHE`` (default
  ``~/.cache/complexity-sweep``), keyed by CPU model, vector extensions, torch version, the packed model's
  source (``packed.py``, ``packed_kernels.c``, ``update_kernels.c``) and ``ATEN_CPU_CAPABILITY``: another
  machine, a new torch, an edit of the packed computation or a forced capability does not read it;
* else :data:`DEFAULT_MS`, measured on the project's development machine (see its comment).

A sweep never times anything itself: a measurement at a sweep's start would share the cores with Ray's start
and the driver's imports, and the plan would change from run to run. No torch import here except in
:func:`measure`: the planner runs in the driver before any trial.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time
from importlib import metadata
from pathlib import Path

CACHE_ENV = "COMPLEXITY_SWEEP_CACHE"
CACHE_FILE = "pack_cost.json"
# what a member-update's cost depends on, besides CPU and torch
PACKED_SOURCES = ("packed.py", "packed_kernels.c", "update_kernels.c")
SIZES = (1, 2, 4, 8, 16, 32)
WIDTHS = (1, 4, 16, 64)

Table = dict[int, dict[int, float]]

# ms per member-update (the trainer's own ms_per_update, one torch thread, best of 3 short runs per cell),
# measured by `python -m models.resnet.pack_cost` (:func:`measure`) on the 2-core AMD EPYC (AVX2) development
# machine, torch 2.13.0+cpu, 2026-12-05 08:33 UTC (load average 1.5 before), with the narrow widths' updates in one
# C call (C <= 16: models/resnet/update_kernels.c); docs/benchmarks.md has the run.
DEFAULT_MS: Table = {
    1: {1: 0.182, 2: 0.105, 4: 0.072, 8: 0.054, 16: 0.046, 32: 0.042},
    4: {1: 0.210, 2: 0.135, 4: 0.103, 8: 0.081, 16: 0.073, 32: 0.071},
    16: {1: 0.444, 2: 0.372, 4: 0.332, 8: 0.357, 16: 0.322, 32: 0.310},
    64: {1: 3.220, 2: 2.335, 4: 2.053, 8: 1.993, 16: 1.981, 32: 2.001},
}


def cpu_model() -> str:
    """The CPU's model name and the vector extensions that choose ATen's and MKL's kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} [{' '.join(vector)}]"


def machine_key() -> str:
    """What a measured table is valid for: CPU, torch version, the packed code, forced ATen capability (if any)."""
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "default")
    return f"{_cpu_and_torch()} | packed code {_code_version()} | ATEN_CPU_CAPABILITY={capability}"


@functools.cache
def _code_version() -> str:
    """A hash of the packed computation's source: a table measured on other code (before the block convs went
    by Winograd's transforms, say) is not this code's cost."""
    digest = hashlib.sha256()
    for name in PACKED_SOURCES:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()[:12]


@functools.cache
def _cpu_and_torch() -> str:
    """Fixed for a process's life, and slow to find (/proc/cpuinfo, package metadata): looked up once."""
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    return f"{cpu_model()} | torch {torch_version}"


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "complexity-sweep") / CACHE_FILE


def _read_cache() -> dict:
    path = cache_path()
    try:
        stamp = path.stat()
    except OSError:
        return {}
    return _parse_cache(str(path), stamp.st_mtime_ns, stamp.st_size)


@functools.lru_cache(maxsize=8)
def _parse_cache(path: str, mtime_ns: int, size: int) -> dict:
    """The cache file's contents, parsed once per version of the file: the planner asks for a member's cost
    thousands of times on a large grid (2 ms each when every ask read and parsed the file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def cached_table() -> Table | None:
    """This machine's measured table, or None when it was never measured here."""
    entry = _read_cache().get(machine_key())
    if not entry:
        return None
    return {int(C): {int(S): float(ms) for S, ms in row.items()} for C, row in entry["ms"].items()}


def table() -> tuple[Table, str]:
    """(table, where it comes from): this machine's measurement if cached, else the defaults."""
    measured = cached_table()
    return (measured, f"measured ({cache_path()})") if measured else (DEFAULT_MS, "defaults")


def _interpolate(points: dict[int, float], x: float, transform) -> float:
    """Piecewise linear in ``transform(x)`` between the tabulated points; flat beyond the last one."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]]
    if x >= xs[-1]:
        return points[xs[-1]]
    hi = next(i for i, v in enumerate(xs) if v >= x)
    a, b = xs[hi - 1], xs[hi]
    w = (transform(x) - transform(a)) / (transform(b) - transform(a))
    return points[a] + w * (points[b] - points[a])


def member_ms(C: int, S: int, costs: Table | None = None) -> float:
    """ms per member-update of width ``C`` in a pack of ``S``: linear in log2(S) between the tabulated sizes
    (flat beyond the largest: not measured, so no gain assumed) and in C² between tabulated widths (the
    products grow with C²); above the widest, that width's cost scaled by (C / C_max)²."""
    costs = costs if costs is not None else table()[0]
    widths = sorted(costs)
    at = {w: _interpolate(costs[w], S, math.log2) for w in widths}
    if widths[-1] < C:
        return at[widths[-1]] * (C / widths[-1]) ** 2
    return _interpolate(at, C, lambda c: c * c)


def measure(widths: tuple[int, ...] = WIDTHS, sizes: tuple[int, ...] = SIZES, seconds: float = 0.4,
            repeats: int = 3, save: bool = True) -> Table:
    """Time the trainer's packed update at each (C, S), one torch thread: per cell the best of ``repeats``
    runs of about ``seconds`` each (after a warm-up run), ms per member-update as ``Trainer.ms_per_update``
    reports it. Writes the table to the cache under :func:`machine_key` when ``save``.

    The runs go in rounds over all cells, so that each cell's best comes from moments spread over the whole
    measurement: a shared machine's speed drifts (by up to 1.5x within seconds on the 2-core VM of
    docs/benchmarks.md), and cells timed back to back, one after the other, fell in different spells there (a
    table so measured ranked C=64's S=8 above both S=4 and S=16, and split hw2's ten C=64 seeds 4 + 4 + 2)."""
    import torch

    from models.resnet.config import TrainConfig
    from models.resnet.data import load_for_config
    from models.resnet.trainer import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_for_config(TrainConfig(C=1))
        best = {(C, S): math.inf for C in widths for S in sizes}
        # Updates per run, sized once per cell from the defaults' ms per pack-update.
        updates = {(C, S): max(3, round(1000 * seconds / (member_ms(C, S, DEFAULT_MS) * S))) for C, S in best}
        for run in range(repeats + 1):
            for (C, S), n in updates.items():
                trainer = Trainer(TrainConfig(C=C, budget=n, eval_every=n), list(range(S)), data=data)
                for _ in trainer.run():
                    pass
                if run:  # the first round warms allocator and caches
                    best[C, S] = min(best[C, S], trainer.ms_per_update)
        out: Table = {C: {S: round(best[C, S], 4) for S in sizes} for C in widths}
    finally:
        torch.set_num_threads(threads)
    if save:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = dict(_read_cache())  # a copy: the parsed file is shared by every reader
        cache[machine_key()] = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                "load_average": os.getloadavg()[0],
                                "ms": {str(C): {str(S): ms for S, ms in row.items()} for C, row in out.items()}}
        path.write_text(json.dumps(cache, indent=1) + "\n")
    return out


def markdown(costs: Table) -> str:
    sizes = sorted({S for row in costs.values() for S in row})
    lines = ["| C | " + " | ".join(f"S={S}" for S in sizes) + " | cheapest |", "|---|" + "---|" * (len(sizes) + 1)]
    for C, row in sorted(costs.items()):
        best = min(row, key=lambda S: (row[S], -S))
        lines.append(f"| {C} | " + " | ".join(f"{row[S]:.3f}" for S in sizes) + f" | S={best} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure this machine's packed-update cost table and cache it.")
    parser.add_argument("--widths", type=int, nargs="+", default=list(WIDTHS))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--seconds", type=float, default=0.4, help="per timed run")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    measured = measure(tuple(args.widths), tuple(args.sizes), args.seconds)
    print(f"{machine_key()}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after; ms per member-update:")
    print(markdown(measured))
    print(f"cached in {cache_path()}")
