"""The MLflow UI decorations' texts and names (issue 16), without a store; the store and the browser side
are checked in tests/sweep/test_ui.py."""

from __future__ import annotations

import re

from record.colours import configuration_hex_colour, knob_hex_colours
from sweep import mlflow_ui
from sweep.spec import load_spec


def test_width_tag_is_zero_padded_so_text_order_is_numeric_order():
    widths = [1, 2, 4, 64]
    tags = [mlflow_ui.width_tag(c, widths) for c in widths]
    assert tags == ["C=01", "C=02", "C=04", "C=64"]
    assert sorted(tags) == tags
    assert mlflow_ui.width_tag(4, [4]) == "C=04"  # at least two digits
    assert [mlflow_ui.width_tag(c, [8, 128]) for c in (8, 128)] == ["C=008", "C=128"]


def test_width_colours_are_distinct_hex_per_width():
    colours = knob_hex_colours([64, 1, 2, 4, 4])
    assert sorted(colours) == [1, 2, 4, 64]
    assert len(set(colours.values())) == 4
    assert all(len(v) == 7 and v.startswith("#") for v in colours.values())
    # viridis at 0 (C=1) is dark purple #440154 (matplotlib's table); the widest C is at 0.85 (green-yellow)
    assert colours[1] == "#440154"


def test_parent_params_are_prefixed_and_none_is_dropped():
    spec, _ = load_spec("smoke", ["model.C=[1,4]", "seeds=2"])
    params = mlflow_ui.parent_params(spec)
    assert params["sweep.name"] == "smoke" and params["sweep.model.family"] == "resnet"
    assert (params["sweep.model.C"], params["sweep.seeds"], params["sweep.lr"]) == ("[1, 4]", "2", "0.1")
    assert "sweep.pack_size" not in params and "sweep.tracking.uri" not in params  # None values dropped
    # a grid without a scheduler searches nothing: no sweep.search.* params that do not apply
    assert not [k for k in params if k.startswith("sweep.search.")]
    searched, _ = load_spec("smoke", ["search.scheduler=asha"])
    assert mlflow_ui.parent_params(searched)["sweep.search.scheduler"] == "asha"


def test_child_note_names_model_width_params_seed_and_protocol():
    params = {"C": 4, "seed": 0, "protocol": "handout", "budget": 4000, "lr": 0.1, "batch_size": 128,
              "model_family": "resnet", "param_count": 398}
    assert mlflow_ui.child_note(params) == (
        "ResNet C=4 (398 params), seed 0, handout protocol, 4000 updates, lr 0.1, batch size 128")
    assert "400 epochs" in mlflow_ui.child_note({**params, "protocol": "epochs", "budget": 400})


def test_runs_url_opens_the_model_training_view():
    assert mlflow_ui.runs_url("7", "sqlite:////tmp/m.db") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning")
    assert mlflow_ui.runs_url("3", "http://10.0.0.5:5000/") == (
        "http://10.0.0.5:5000/#/experiments/3/runs?workflowType=machine_learning")


def test_decorations_follow_the_family_knob():
    """Issue 13: the mixture's knob K gets the same grouping tag and descriptions as C does."""
    assert [mlflow_ui.width_tag(k, [1, 5, 80], knob="K") for k in (1, 5, 80)] == ["K=01", "K=05", "K=80"]
    assert mlflow_ui.width_tag(100, [1, 100], knob="K") == "K=100"
    params = {"K": 10, "seed": 2, "budget": 100, "eval_every": 1, "model_family": "bernoulli_mixture",
              "param_count": 649, "eps": 1e-6, "binarize_threshold": 8}
    assert mlflow_ui.child_note(params) == (
        "Bernoulli mixture K=10 (649 params), seed 2, 100 EM iterations, pixels >= 8, eps 1e-06")
    note = mlflow_ui.experiment_note("bernoulli_mixture")
    assert "Bernoulli mixture" in note and "`K=5 seed=0`" in note and "`K=05`" in note
    assert "ResNet" in mlflow_ui.experiment_note("resnet") and "`C=4 seed=0`" in mlflow_ui.experiment_note("resnet")


def test_search_params_are_only_the_keys_that_act():
    """Issue 26: a random search without a scheduler has no ASHA settings; a refine search no metric."""
    random, _ = load_spec("smoke", ["search.algorithm=random", "search.num_samples=2", "data.val_fraction=0.2",
                                    "search.space={lr: {loguniform: [0.001, 1]}}"])
    keys = {k.removeprefix("sweep.search.") for k in mlflow_ui.parent_params(random) if k.startswith("sweep.search.")}
    assert keys == {"algorithm", "num_samples", "space.lr.loguniform", "seed", "metric", "mode"}
    refine, _ = load_spec("refine-threshold", [])
    keys = {k.removeprefix("sweep.search.") for k in mlflow_ui.parent_params(refine) if k.startswith("sweep.search.")}
    assert keys == {"algorithm", "num_samples"}
    asha, _ = load_spec("smoke", ["search.scheduler=asha"])
    keys = {k.removeprefix("sweep.search.") for k in mlflow_ui.parent_params(asha) if k.startswith("sweep.search.")}
    assert keys == {"scheduler", "grace_period", "reduction_factor", "metric", "mode"}


def test_a_search_experiment_is_described_as_a_search():
    note = mlflow_ui.experiment_note("resnet", "optuna")
    assert "optuna" in note and "★" in note and "stopped@" in note and "Group by" not in note


def test_configuration_colours_differ_for_the_first_twenty():
    colours = [configuration_hex_colour(i) for i in range(20)]
    assert len(set(colours)) == 20 and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert configuration_hex_colour(20) == colours[0]
