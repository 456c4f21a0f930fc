"""Sharded, resumable job lists: which jobs a shard runs, what a finished output skips."""

from __future__ import annotations

import json

import pytest

from regframe.job_shards import append_record, claim, parse_shard, pending_jobs


def test_shards_split_the_jobs_and_skip_finished_ones(tmp_path):
    jobs = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    out = tmp_path / "runs" / "jobs.jsonl"

    def key(record):
        return record["method"], record["seed"]

    assert list(pending_jobs(jobs, "0/2", out, key)) == [("a", 0), ("a", 1), ("a", 2)]
    assert list(pending_jobs(jobs, "1/2", out, key)) == [("b", 0), ("b", 1)]
    append_record(out, {"method": "a", "seed": 1, "score": 0.5})
    append_record(out, {"method": "b", "seed": 0})
    assert list(pending_jobs(jobs, "0/2", out, key)) == [("a", 0), ("a", 2)]
    assert list(pending_jobs(jobs, "1/2", out, key)) == [("b", 1)]
    assert json.loads(out.read_text().splitlines()[0]) == {"method": "a", "seed": 1, "score": 0.5}


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shards_are_refused(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_claim_is_won_once(tmp_path):
    folder = tmp_path / "job" / "a"
    assert claim(folder) and (folder / "claimed").is_file()
    assert not claim(folder) and not claim(folder)
    assert claim(tmp_path / "job" / "b")
