"""Run names (issue 26): values to 3 significant digits, marks for the best configuration and early stops."""

from __future__ import annotations

import pytest

from models.resnet.config import TrainConfig
from record import marked_name, short_point, short_value, unmarked_name
from sweep.plan import TrialGroup


@pytest.mark.parametrize(("value", "text"), [
    (0.0022637229697395483, "0.00226"), (0.05, "0.05"), (0.1, "0.1"), (1e-06, "1e-06"), (0.407414465416623, "0.407"),
    (4, "4"), (0.0, "0.0"), (4000.0, "4000.0"), ("handout", "handout"), (123456.7, "1.23e+05")])
def test_short_value(value, text):
    assert short_value(value) == text


def test_short_point_keeps_ints_and_words_and_shortens_floats():
    assert short_point("C=4 lr=0.0022637229697395483 batch_size=32") == "C=4 lr=0.00226 batch_size=32"
    assert short_point("C=4 protocol=epochs label_noise=0.2") == "C=4 protocol=epochs label_noise=0.2"


def test_a_search_run_name_is_short_and_the_grid_point_exact():
    group = TrialGroup(config=TrainConfig(C=4, lr=0.0022637229697395483, batch_size=32), seeds=(1,),
                       axes=("C", "lr", "batch_size"), family_name="resnet")
    assert group.run_name(1) == "C=4 lr=0.00226 batch_size=32 seed=1"
    assert group.grid_point == "C=4 lr=0.0022637229697395483 batch_size=32"


@pytest.mark.parametrize(("best", "stopped", "name"), [
    (True, None, "★ C=4 lr=0.1 seed=0"), (False, 150, "stopped@150 C=4 lr=0.1 seed=0"),
    (True, 150, "★ stopped@150 C=4 lr=0.1 seed=0"), (False, None, "C=4 lr=0.1 seed=0")])
def test_marks_lead_the_name_and_come_off_again(best, stopped, name):
    assert marked_name("C=4 lr=0.1 seed=0", best=best, stopped_at=stopped) == name
    assert unmarked_name(name) == "C=4 lr=0.1 seed=0"
    assert marked_name(name, best=best, stopped_at=stopped) == name  # marking twice changes nothing
    assert marked_name(name) == "C=4 lr=0.1 seed=0"
