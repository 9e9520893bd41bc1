"""The pack-cost table: its cache (this machine's only, else the defaults) and its measurement (nothing timed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.resnet import pack_cost


def test_a_cached_table_is_read_for_this_machine_only(tmp_path, monkeypatch):
    monkeypatch.setenv(pack_cost.CACHE_ENV, str(tmp_path))
    assert pack_cost.table() == (pack_cost.DEFAULT_MS, "defaults")
    measured = {"64": {"1": 3.0, "8": 1.0, "32": 2.0}}
    other = {"64": {"1": 3.0, "8": 2.0, "32": 1.0}}
    (tmp_path / pack_cost.CACHE_FILE).write_text(json.dumps({
        pack_cost.machine_key(): {"measured": "now", "ms": measured},
        "another CPU | torch 0 | ATEN_CPU_CAPABILITY=default": {"measured": "then", "ms": other}}))
    table, source = pack_cost.table()
    assert table == {64: {1: 3.0, 8: 1.0, 32: 2.0}} and source.startswith("measured")
    assert pack_cost.member_ms(64, 8) == 1.0
    # A forced ATen capability is another kernel set: the table measured without it does not apply.
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert pack_cost.table()[1] == "defaults"


def test_a_table_measured_on_other_packed_code_is_not_read(tmp_path, monkeypatch):
    """The same machine and torch, but the packed model's source edited since (its files copied and changed):
    the cached table described the old code, so the defaults apply until the table is measured again."""
    monkeypatch.setenv(pack_cost.CACHE_ENV, str(tmp_path))
    (tmp_path / pack_cost.CACHE_FILE).write_text(json.dumps({
        pack_cost.machine_key(): {"measured": "now", "ms": {"64": {"8": 1.0}}}}))
    assert pack_cost.table()[1].startswith("measured")
    edited = tmp_path / "code"
    edited.mkdir()
    for name in pack_cost.PACKED_SOURCES:
        (edited / name).write_bytes(Path(pack_cost.__file__).with_name(name).read_bytes() + b"\n")
    monkeypatch.setattr(pack_cost, "__file__", str(edited / "pack_cost.py"))
    pack_cost._code_version.cache_clear()
    try:
        assert pack_cost.table()[1] == "defaults"
    finally:
        monkeypatch.undo()
        pack_cost._code_version.cache_clear()
    assert pack_cost._code_version() in pack_cost.machine_key()


def test_an_unreadable_cache_means_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv(pack_cost.CACHE_ENV, str(tmp_path))
    (tmp_path / pack_cost.CACHE_FILE).write_text("{not json")
    assert pack_cost.table()[1] == "defaults"


@pytest.mark.parametrize("C", sorted(pack_cost.DEFAULT_MS))
def test_defaults_cover_every_tabulated_size(C):
    assert sorted(pack_cost.DEFAULT_MS[C]) == list(pack_cost.SIZES)


def test_the_cache_file_is_parsed_once_per_version_of_it(tmp_path, monkeypatch):
    """The planner asks for member costs thousands of times on a large grid: the file is parsed when it
    changed, not on every ask, and a rewritten file is seen at the next ask."""
    monkeypatch.setenv(pack_cost.CACHE_ENV, str(tmp_path))
    path = tmp_path / pack_cost.CACHE_FILE
    path.write_text(json.dumps({pack_cost.machine_key(): {"measured": "now", "ms": {"64": {"8": 1.0}}}}))
    pack_cost._parse_cache.cache_clear()
    assert [pack_cost.member_ms(64, 8) for _ in range(100)] == [1.0] * 100
    assert pack_cost._parse_cache.cache_info().misses == 1
    path.write_text(json.dumps({pack_cost.machine_key(): {"measured": "later", "ms": {"64": {"8": 2.0}}}}))
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # a rewrite within the clock's resolution still counts
    os.utime(path, ns=(stamp, stamp))
    assert pack_cost.member_ms(64, 8) == 2.0
    assert pack_cost._parse_cache.cache_info().misses == 2


def test_the_measurement_times_every_cell_once_per_round_and_keeps_its_best(tmp_path, monkeypatch):
    """Cells are timed in rounds over the whole table (a drifting machine then spreads each cell's runs over
    the measurement instead of giving one cell one spell), the first round only warms up, and a cell's entry
    is its fastest later run. The trainer is a stand-in that reports a given time per run: nothing is timed."""
    import models.resnet.trainer

    monkeypatch.setenv(pack_cost.CACHE_ENV, str(tmp_path))
    calls: list[tuple[int, int]] = []
    # ms per member-update of each run of a cell, in order: the warm-up's (fastest, must be ignored), then two
    ms = {(1, 1): [0.1, 5.0, 4.0], (1, 2): [0.1, 3.0, 3.5], (4, 1): [0.1, 9.0, 8.0], (4, 2): [0.1, 6.0, 7.0]}

    class StandInTrainer:
        def __init__(self, config, seeds, data):
            self.cell = (config.C, len(seeds))
            calls.append(self.cell)
            self.ms_per_update = ms[self.cell][sum(c == self.cell for c in calls) - 1]

        def run(self):
            return iter(())

    monkeypatch.setattr(models.resnet.trainer, "Trainer", StandInTrainer)
    table = pack_cost.measure(widths=(1, 4), sizes=(1, 2), seconds=0.01, repeats=2, save=True)
    assert calls == [(1, 1), (1, 2), (4, 1), (4, 2)] * 3
    assert table == {1: {1: 4.0, 2: 3.0}, 4: {1: 8.0, 2: 6.0}}
    assert pack_cost.cached_table() == table
