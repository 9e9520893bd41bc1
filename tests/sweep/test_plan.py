"""The plan's pack sizes from a cost table: given the table, the choice is pinned (no timing here)."""

from __future__ import annotations

import pytest

from models.resnet.pack_cost import member_ms
from sweep import plan
from sweep.plan import makespan, plan_trials
from sweep.spec import load_spec

# ms per member-update, shaped like the development machine's: C=64 cheapest at S=8 (S=32 dearer: the stem's
# output of 32 members leaves the cache), C=1 cheaper the bigger the pack.
TABLE = {
    1: {1: 1.0, 2: 0.6, 4: 0.4, 8: 0.25, 16: 0.16, 32: 0.12},
    64: {1: 3.3, 2: 2.2, 4: 1.7, 8: 1.5, 16: 1.65, 32: 1.95},
}


def _cost(table: dict) -> object:
    return lambda config, size: config.budget * config.updates_per_step * member_ms(config.C, size, table)


def _plan(overrides: list[str], slots: int, table: dict = TABLE) -> list[tuple[int, int]]:
    spec, _ = load_spec("hw2", ["model.C=[1,64]", *overrides])
    return [(g.config.C, len(g.seeds)) for g in plan_trials(spec, slots, pack_cost=_cost(table))]


def test_member_cost_interpolates_in_log_size_and_width_squared():
    assert member_ms(64, 8, TABLE) == 1.5
    assert member_ms(64, 6, TABLE) == pytest.approx(1.7 + (1.5 - 1.7) * 0.5849625, rel=1e-6)  # log2(6/4)
    assert member_ms(64, 64, TABLE) == 1.95  # beyond the table: no gain assumed
    # C=32: a quarter of the way from 1 to 64 in C^2 ((1024 - 1) / (4096 - 1) = 0.2498)
    assert member_ms(32, 8, TABLE) == pytest.approx(0.25 + (1.5 - 0.25) * 1023 / 4095)
    assert member_ms(128, 8, TABLE) == pytest.approx(4 * 1.5)  # above the widest: scaled by C^2


def test_packs_of_the_cheapest_size_on_one_slot():
    # 32 seeds, one slot: C=64 in packs of 8 (1.5 ms, the table's minimum), C=1 in one pack of 32 (0.12 ms).
    assert _plan(["seeds=32"], slots=1) == [(64, 8)] * 4 + [(1, 32)]
    # 12 seeds: between the tabulated sizes, log2-interpolated: a pack of 6 costs 1.7 - 0.2 x log2(1.5) = 1.583 ms
    # per member, one of 12 costs 1.5 + 0.15 x log2(1.5) = 1.588 ms, 3 of 4 1.7 ms: two packs of 6.
    assert member_ms(64, 6, TABLE) < member_ms(64, 12, TABLE) < member_ms(64, 4, TABLE)
    assert _plan(["seeds=12"], slots=1) == [(64, 6), (64, 6), (1, 12)]


def test_slots_split_a_grid_point_that_would_run_alone():
    # 10 seeds on 2 slots, ms per update of a pack: C=64 in one pack of 10 (1.548 ms each) 15.48, C=1's pack
    # of 10 (0.221 each) 2.21: the sweep would last 15.48 while the other slot idles. Two packs of 5 (1.636 each,
    # 8.18 per pack): max(8.18, (16.36 + 2.21) / 2 = 9.28) = 9.28; three packs (4, 4, 2: 1.7 each) do more
    # work, max(6.8, (17 + 2.21) / 2) = 9.61. So 2 packs; then balanced (next test): 6 + 4.
    assert _plan(["seeds=10"], slots=2) == [(64, 6), (64, 4), (1, 10)]
    # Where the cheapest size already splits it within the share, slots change nothing.
    assert _plan(["seeds=32"], slots=2) == _plan(["seeds=32"], slots=1)


def test_seeds_move_between_packs_while_the_schedule_gets_shorter():
    # The two packs of 5 above (8.18 ms per update each) and C=1's pack of 10 (2.21) on 2 slots, longest first:
    # one slot runs a C=64 pack and C=1's, 10.39, while the other idles after 8.18. 6 + 4 (6 x 1.583 = 9.50,
    # 4 x 1.7 = 6.80): 9.50 and 6.80 + 2.21 = 9.01, so 9.50; 7 + 3 (7 x 1.539 = 10.77) is longer again.
    c64 = load_spec("hw2", ["model.C=[64]"])[0].configs()[0]
    c1 = load_spec("hw2", ["model.C=[1]"])[0].configs()[0]

    def per_update(config: object, size: int) -> float:
        return member_ms(config.C, size, TABLE)

    def span(sizes: list[int]) -> float:
        return makespan([(c64, s) for s in sizes] + [(c1, 10)], 2, per_update)

    assert span([5, 5]) == pytest.approx(8.18 + 2.21, abs=0.01)
    assert span([6, 4]) == pytest.approx(9.50, abs=0.01)
    assert span([7, 3]) == pytest.approx(10.77, abs=0.01)
    assert _plan(["seeds=10"], slots=2) == [(64, 6), (64, 4), (1, 10)]
    # One slot: the schedule is all the work, the equal packs are kept (see the pack of 6 + 6 above).
    assert _plan(["seeds=12"], slots=1) == [(64, 6), (64, 6), (1, 12)]


def test_the_balancing_estimates_a_bounded_number_of_schedules(monkeypatch):
    # With one schedule allowed (the plan's own), no move is tried: the equal packs stay.
    monkeypatch.setattr(plan, "MAX_SCHEDULES", 1)
    assert _plan(["seeds=10"], slots=2) == [(64, 5), (64, 5), (1, 10)]
    # A large grid on many slots still gives every member once.
    monkeypatch.setattr(plan, "MAX_SCHEDULES", 50)
    spec, _ = load_spec("width", ["seeds=9", "lr=[0.1,0.05,0.02,0.01]"])
    members = sorted((g.config.C, g.config.lr, s) for g in plan.plan_trials(spec, 16, pack_cost=_cost(TABLE))
                     for s in g.seeds)
    assert members == sorted((C, lr, s) for C in (1, 2, 4, 8, 16, 32, 64) for lr in (0.1, 0.05, 0.02, 0.01)
                             for s in range(9))


def test_makespan_starts_trials_longest_first_on_the_first_free_slot():
    flat = lambda config, size: 1.0  # noqa: E731 - one unit per member
    # packs of 3, 3, 2, 2, 2 on 2 slots: 3 | 3, then 2 on each (5 | 5), the last 2 on the first free: 7.
    assert makespan([(None, s) for s in (2, 3, 2, 3, 2)], 2, flat) == 7
    assert makespan([(None, s) for s in (2, 3, 2, 3, 2)], 1, flat) == 12
    assert makespan([(None, s) for s in (2, 3, 2, 3, 2)], 8, flat) == 3


def test_another_machine_table_gives_another_pack_size():
    # A CPU where packing C=64 keeps paying up to 32: one pack of 32 on one slot.
    flat = {**TABLE, 64: {1: 3.3, 2: 2.2, 4: 1.7, 8: 1.5, 16: 1.4, 32: 1.3}}
    assert _plan(["seeds=32"], slots=1, table=flat) == [(64, 32), (1, 32)]


def test_pack_size_and_pack_off_override_the_table():
    assert _plan(["seeds=32", "pack_size=16"], slots=1) == [(64, 16), (64, 16), (1, 16), (1, 16)]
    assert _plan(["seeds=3", "pack=off"], slots=1) == [(64, 1)] * 3 + [(1, 1)] * 3


def test_longest_first_by_the_table():
    # Ordered by a pack's estimated time (size x per-member cost): C=64's packs of 8 (8 x 1.5 = 12 ms per
    # update) before C=1's pack of 32 (32 x 0.12 = 3.84 ms).
    assert [C for C, _ in _plan(["seeds=32"], slots=2)] == [64, 64, 64, 64, 1]


def test_slots_do_not_split_where_the_extra_work_costs_more_than_it_gains():
    # 2 seeds of C=64 and of C=1 on 2 slots: the pack of 2 (2 x 2.2 = 4.4 ms per update) beside C=1's pack
    # (2 x 0.6 = 1.2) lasts 4.4; two single C=64 trials (3.3 each) would last max(3.3, (6.6 + 1.2) / 2 = 3.9):
    # shorter, so they split; with a table where single members cost 5 ms, they would not: max(5, 5.6) > 4.4.
    assert _plan(["seeds=2"], slots=2) == [(64, 1), (64, 1), (1, 2)]
    dear = {**TABLE, 64: {**TABLE[64], 1: 5.0}}
    assert _plan(["seeds=2"], slots=2, table=dear) == [(64, 2), (1, 2)]
