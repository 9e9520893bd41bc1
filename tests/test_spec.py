"""Spec loading, overrides, grid expansion and the plan of packed trials."""

import pytest

from sweep.plan import plan_trials, relative_cost
from sweep.spec import SpecError, apply_overrides, load_spec, preset_names


def test_presets_match_the_issue():
    assert preset_names() == ["hw2", "hw2-epochs", "smoke", "width"]
    hw2, _ = load_spec("hw2")
    assert (hw2.model.C, hw2.seed_list, hw2.protocol, hw2.budget, hw2.lr, hw2.batch_size) == (
        [1, 2, 4, 64], [0, 1, 2, 3, 4], "handout", 4000, 0.1, 128)
    epochs, _ = load_spec("hw2-epochs")
    assert (epochs.model.C, epochs.protocol, epochs.budget) == ([1, 2, 4, 64], "epochs", 4000)
    width, _ = load_spec("width")
    assert width.model.C == [1, 2, 4, 8, 16, 32, 64] and width.seed_list == [0, 1, 2, 3, 4]
    smoke, _ = load_spec("smoke")
    assert (smoke.model.C, smoke.seed_list, smoke.budget, smoke.eval_every) == ([1, 4], [0, 1], 50, 10)


def test_overrides_parse_yaml_values_and_nested_keys():
    spec, resolved = load_spec("hw2", ["seeds=10", "model.C=[1,2,4,8]", "resources.gpu=0.25", "pack=off"])
    assert spec.seed_list == list(range(10)) and spec.model.C == [1, 2, 4, 8]
    assert spec.resources.gpu == 0.25 and spec.pack == "off"
    assert resolved["model"]["C"] == [1, 2, 4, 8]
    raw = {"a": {"b": 1}}
    assert apply_overrides(raw, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}} and raw == {"a": {"b": 1}}


def test_every_list_is_a_grid_axis():
    spec, _ = load_spec("smoke", ["lr=[0.1,0.05]", "protocol=[handout,epochs]", "budget=20", "eval_every=10"])
    configs = spec.configs()
    assert len(configs) == 2 * 2 * 2
    assert {(c.C, c.lr, c.protocol) for c in configs} == {
        (C, lr, p) for C in (1, 4) for lr in (0.1, 0.05) for p in ("handout", "epochs")}


def test_pack_off_gives_one_trial_per_seed_and_auto_packs_seeds():
    spec, _ = load_spec("hw2", ["pack=off"])
    assert len(plan_trials(spec)) == 20 and all(len(g.seeds) == 1 for g in plan_trials(spec))
    spec, _ = load_spec("hw2")
    assert [(g.config.C, g.seeds) for g in plan_trials(spec, slots=1)] == [
        (C, (0, 1, 2, 3, 4)) for C in (64, 4, 2, 1)]
    spec, _ = load_spec("hw2", ["pack_size=2"])
    assert [(g.config.C, len(g.seeds)) for g in plan_trials(spec)] == [
        (64, 2), (64, 2), (64, 1), (4, 2), (4, 2), (2, 2), (2, 2), (1, 2), (1, 2), (4, 1), (2, 1), (1, 1)]


def test_auto_packing_splits_the_expensive_width_across_slots_longest_first():
    spec, _ = load_spec("hw2", ["seeds=10"])
    groups = plan_trials(spec, slots=2)
    assert [(g.config.C, g.seeds) for g in groups] == [
        (64, (0, 1, 2, 3, 4)), (64, (5, 6, 7, 8, 9)),
        (4, tuple(range(10))), (2, tuple(range(10))), (1, tuple(range(10)))]
    assert relative_cost(groups[0].config) > 20 * relative_cost(groups[-1].config)


def test_every_member_appears_once_whatever_the_slots():
    spec, _ = load_spec("width", ["seeds=7"])
    for slots in (1, 2, 3, 8, 64):
        members = sorted((g.config.C, s) for g in plan_trials(spec, slots) for s in g.seeds)
        assert members == sorted((C, s) for C in (1, 2, 4, 8, 16, 32, 64) for s in range(7))


def test_yaml_off_means_pack_off():
    spec, _ = load_spec("smoke", ["pack=off"])
    assert spec.pack == "off"


def test_spec_error_is_one_line():
    with pytest.raises(SpecError) as info:
        load_spec("smoke", ["tracking.urii=x"])
    assert "\n" not in str(info.value) and "did you mean 'uri'" in str(info.value)
