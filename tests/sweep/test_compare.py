"""``sweep compare``: two smoke sweeps (real Ray and MLflow) on one figure with a table; sweeps of different
families refused with one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sweep import cli, driver
from tests.conftest import run_sweep
from tests.sweep.test_cli import run_cli


@pytest.fixture(scope="module")
def two_smoke_sweeps(ray_local, tmp_path_factory) -> tuple[Path, str, driver.Sweep, driver.Sweep]:
    """Two smoke sweeps (budget 20) that differ in lr, in one store, made once for this module's tests:
    (folder, tracking URI, lr=0.05 sweep, lr=0.1 sweep)."""
    folder = tmp_path_factory.mktemp("compare")
    first = run_sweep(folder, "smoke", "--set", "budget=20", "--set", "lr=0.05", "--no-analyze")
    second = run_sweep(folder, "smoke", "--set", "budget=20", "--set", "lr=0.1", "--no-analyze")
    return folder, f"sqlite:///{folder}/mlflow.db", first, second


def test_two_sweeps_on_one_figure_and_a_table(two_smoke_sweeps, tmp_path, capsys):
    _, uri, first, second = two_smoke_sweeps
    capsys.readouterr()
    out = tmp_path / "cmp"
    cli.main(["compare", first.sweep_id, second.sweep_id, "--tracking-uri", uri, "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"{first.sweep_id}: lr=0.05" in printed and f"{second.sweep_id}: lr=0.1" in printed  # what differs
    table = pd.read_csv(out / "compare.csv")
    assert sorted(zip(table["sweep_id"], table["C"], strict=True)) == sorted(
        (s.sweep_id, c) for s in (first, second) for c in (1, 4))  # one row per sweep and width
    assert (table["n_seeds"] == 2).all() and {"final_test_error_mean", "final_test_error_ci95"} <= set(table.columns)
    md = (out / "compare.md").read_text()
    assert md.count(f"| {first.sweep_id} |") == 2 and "final test error" in md
    assert "on the true labels" not in md  # no label noise: that column would repeat the train error's
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.pdf").exists()
    from analysis.compare import default_folder

    assert default_folder([first.sweep_id, second.sweep_id]) == f"compare-{first.sweep_id[-4:]}-{second.sweep_id[-4:]}"


def test_sweeps_of_different_families_are_refused_in_one_line(two_smoke_sweeps, capsys):
    """A mixture sweep added to the store of the module's smoke sweeps, compared with one of them."""
    folder, uri, resnet, _ = two_smoke_sweeps
    mixture = run_sweep(folder, "em", "--set", "model.K=[1,2]", "--set", "seeds=1", "--set", "budget=2",
                        "--set", "name=em-tiny", "--no-analyze")
    capsys.readouterr()  # what the sweep printed
    code, err = run_cli(["compare", resnet.sweep_id, mixture.sweep_id, "--tracking-uri", uri], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "different families or knobs" in err and "bernoulli_mixture, knob K" in err
    code, err = run_cli(["compare", resnet.sweep_id, "--tracking-uri", uri], capsys)
    assert code == 2 and "at least two sweep ids" in err
    code, err = run_cli(["compare", resnet.sweep_id, "no-such-sweep", "--tracking-uri", uri], capsys)
    assert code == 2 and "no sweep with id 'no-such-sweep'" in err
