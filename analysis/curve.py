"""The complexity curve as MLflow metrics on the sweep's parent run, so that the chart view overlays sweeps.

For every metric of the family's complexity panels, per line (a value of each other varying axis), three keys
with ``step`` = the knob's value: ``curve/test_error`` (the mean over seeds of the final value) and
``curve/test_error_low`` / ``_high`` (its 95% t-interval; left out with one seed). A line is named in the key,
``curve/label_noise:0.2/test_error`` (MLflow keys allow ``/`` and ``:``, not ``=``). Lines with a single knob
value (a search's sampled configurations) are no curve and are left out.

MLflow's metric history only grows, so a re-analysis must not append a second copy: the points already there
are read first, and identical points are not logged again. Should the numbers have changed (runs finished
since), the new curve goes under the next prefix, ``curve2/``, and the parent's tag ``sweep.curve_prefix`` names
the current one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Run

from analysis.aggregate import line_axes, varying
from models.family import Family
from record import CURVE_PREFIX, MAX_METRICS_PER_BATCH, TAG_CURVE_PREFIX, with_retry

Points = dict[str, list[tuple[int, float]]]


def curve_points(summary: pd.DataFrame, axes: Sequence[str], knob: str, family: Family,
                 prefix: str = CURVE_PREFIX) -> Points:
    """key -> [(knob value, value)] for every complexity-panel metric and line of ``summary`` (one row per grid
    point, :func:`analysis.aggregate.summarize`)."""
    s = summary[summary["n_seeds"] > 0]
    lines = varying(s, line_axes(axes, knob))
    groups = [((), s)] if not lines else [((k if isinstance(k, tuple) else (k,)), g)
                                           for k, g in s.groupby(lines, sort=True)]
    out: Points = {}
    for key, g in groups:
        if g[knob].nunique() < 2:
            continue
        line = "".join(f"{a}:{v}/" for a, v in zip(lines, key, strict=True))
        for metric in dict.fromkeys(m for panel in family.complexity_panels for m in panel.metrics):
            column = family.final_column(metric)
            for suffix, values in (("", g[f"{column}_mean"]), ("_low", g[f"{column}_mean"] - g[f"{column}_ci95"]),
                                   ("_high", g[f"{column}_mean"] + g[f"{column}_ci95"])):
                points = [(int(k), float(v)) for k, v in zip(g[knob], values, strict=True) if math.isfinite(v)]
                if points:
                    out[f"{prefix}{line}{metric}{suffix}"] = sorted(points)
    return out


def _logged(client: MlflowClient, run: Run, prefix: str) -> Points:
    """The points already under ``prefix`` on the run."""
    return {key: sorted((int(m.step), float(m.value)) for m in with_retry(client.get_metric_history,
                                                                          run.info.run_id, key))
            for key in run.data.metrics if key.startswith(prefix)}


def log_curve(client: MlflowClient, parent: Run, summary: pd.DataFrame, axes: Sequence[str], family: Family
              ) -> str:
    """Put the sweep's complexity curve on its parent run (module docstring); returns the prefix it is under."""
    parent = with_retry(client.get_run, parent.info.run_id)  # its metrics as they are now
    prefix = parent.data.tags.get(TAG_CURVE_PREFIX, CURVE_PREFIX)
    wanted = curve_points(summary, axes, family.knob, family, prefix)
    logged = _logged(client, parent, prefix)
    if logged == wanted:
        return prefix
    if logged:  # a different curve already: the next prefix, never a second point at a step
        number = int(prefix.rstrip("/").removeprefix("curve") or 1) + 1
        prefix = f"curve{number}/"
        wanted = curve_points(summary, axes, family.knob, family, prefix)
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, points in wanted.items() for step, value in points]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        with_retry(client.log_batch, parent.info.run_id, metrics=metrics[i: i + MAX_METRICS_PER_BATCH],
                   synchronous=True)
    with_retry(client.set_tag, parent.info.run_id, TAG_CURVE_PREFIX, prefix)
    return prefix
