"""The LPBA40 test split written as a Learn2Reg folder (what register / evaluate read) matches the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from regframe.learn2reg import load_dataset_json

REPO = Path(__file__).resolve().parents[2]


def test_written_test_dataset_lists_the_configs_test_pairs(shared_data, benchmark_script, tmp_path, monkeypatch):
    if not (REPO.parent / "shared" / "data" / "LPBA40").is_dir():
        pytest.skip("the config reads ../shared/data/LPBA40, which is absent")
    benchmark = benchmark_script("jrss_benchmark")
    monkeypatch.chdir(REPO)
    written = load_dataset_json(benchmark.write_test_dataset(tmp_path / "test_split"))
    subject = lambda path: Path(path).name.split("_")[1]  # noqa: E731
    pairs = [(subject(p.fixed.image), subject(p.moving.image)) for p in written.registration_val]
    fixed, moving = ["0037", "0022"], ["0034", "0023", "0011", "0018", "0026", "0025"]
    assert pairs == [(f, m) for f in fixed for m in moving]
    assert sorted(subject(entry.image) for entry in written.training) == sorted(fixed + moving)
    assert all(p.fixed.image.is_file() and p.moving.label.is_file() for p in written.registration_val)
