"""The LPBA40 JRSS benchmark's table: means, controls' inapplicable columns and paired differences."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def benchmark(benchmark_script):
    return benchmark_script("jrss_benchmark")


def test_table_reports_means_and_paired_differences(benchmark, tmp_path):
    records = [{"method": "identity", "seed": 0, "dice": 0.5},
               {"method": "pyramid_mind", "seed": 0, "dice": 0.61, "std_jac": 0.2, "sdlogj": 0.07, "fold_pct": 0.1,
                "seconds_per_pair": 2.5, "pairs": {"a": 0.60, "b": 0.62}}]
    for seed, (jrss_seg, seg, jrss_reg, reg) in enumerate([(0.70, 0.60, 0.62, 0.60), (0.72, 0.61, 0.64, 0.61),
                                                           (0.74, 0.65, 0.63, 0.63)]):
        common = {"seed": seed, "std_jac": 0.1, "sdlogj": 0.05, "fold_pct": 0.0, "train_s": 600.0}
        records += [{"method": "jrss", "seg_dice": jrss_seg, "seg_dice_grouped": jrss_seg, "dice": jrss_reg,
                     "pairs": {"a": jrss_reg, "b": jrss_reg - 0.01}, **common},
                    {"method": "mono_seg", "seg_dice": seg, "seg_dice_grouped": seg, "dice": 0.4, **common},
                    {"method": "mono_reg", "seg_dice": 0.01, "seg_dice_grouped": 0.01, "dice": reg, **common}]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    lines = benchmark.table(path).splitlines()
    jrss = next(line for line in lines if line.startswith("| jrss |"))
    assert "| 0.7200 ± 0.0200 |" in jrss and jrss.endswith("| 10.0000 ± 0.0000 |  |")  # seg Dice; train minutes
    training_free = next(line for line in lines if line.startswith("| pyramid_mind |"))
    assert training_free == "| pyramid_mind | 1 |  |  | 0.6100 | 0.2000 | 0.0700 | 0.1000 |  | 2.5 |"
    mono_seg = next(line for line in lines if line.startswith("| mono_seg |")).split(" | ")
    assert mono_seg[5] == ""  # a segmentation-only run has no registration Dice
    seg_difference = next(line for line in lines if "mono_seg | seg_dice |" in line)
    # differences 0.10, 0.11, 0.09: mean 0.10, sd 0.01, t(0.975, 2) = 4.303 -> half-width 0.0248
    assert "+0.1000" in seg_difference and "[+0.0752, +0.1248]" in seg_difference
    reg_difference = next(line for line in lines if "mono_reg | dice |" in line)
    assert "+0.0200 / +0.0300 / +0.0000" in reg_difference
    # per pair: JRSS means 0.63 and 0.62 against 0.60 and 0.62 -> +0.03, 0.00; t(0.975, 1) = 12.706
    to_training_free = next(line for line in lines if line.startswith("| JRSS − pyramid_mind |"))
    assert to_training_free == "| JRSS − pyramid_mind | 2 | 1 | +0.0150 | [-0.1756, +0.2056] |"


def test_table_shows_the_atlas_baseline_as_a_segmentation_row_with_its_difference(benchmark, tmp_path):
    records = []
    for seed, (jrss_seg, atlas_seg) in enumerate([(0.60, 0.70), (0.62, 0.71), (0.64, 0.75)]):
        records += [{"method": "jrss", "seed": seed, "seg_dice": jrss_seg, "seg_dice_grouped": jrss_seg, "dice": 0.6,
                     "std_jac": 0.1, "sdlogj": 0.05, "fold_pct": 0.0, "train_s": 60.0},
                    {"method": "atlas_pyramid_mind", "seed": seed, "seg_dice": atlas_seg, "seg_dice_grouped": atlas_seg}]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    lines = benchmark.table(path).splitlines()
    atlas = next(line for line in lines if line.startswith("| atlas_pyramid_mind |")).split(" | ")
    assert atlas[2] == "0.7200 ± 0.0265" and atlas[4] == ""   # segmentation only: no registration Dice
    difference = next(line for line in lines if "atlas_pyramid_mind | seg_dice |" in line)
    # differences -0.10, -0.09, -0.11: mean -0.10, sd 0.01 -> half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert "-0.1000" in difference and "[-0.1248, -0.0752]" in difference


def test_table_by_n_has_one_row_per_n_with_paired_differences(benchmark, tmp_path):
    paths = []
    for n, offset in ((1, 0.0), (5, 0.2)):
        records = [{"method": method, "seed": seed, "num_labelled": n, "seg_dice": seg + offset, "dice": reg + offset}
                   for seed, (jrss_seg, seg, jrss_reg, reg) in enumerate([(0.5, 0.3, 0.6, 0.5), (0.6, 0.3, 0.6, 0.6),
                                                                          (0.7, 0.6, 0.6, 0.7)])
                   for method, seg, reg in (("jrss", jrss_seg, jrss_reg), ("mono_seg", seg, 0.0))]
        records.append({"method": "pyramid_mind", "seed": 0, "num_labelled": n, "dice": 0.9})  # not a trained row
        paths.append(tmp_path / f"n{n}.jsonl")
        paths[-1].write_text("\n".join(json.dumps(r) for r in records))
    lines = benchmark.table_by_n(paths).splitlines()
    # seg differences 0.2, 0.3, 0.1: mean 0.2, sd 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.2484
    assert lines[2] == ("| 1 | 3 | 0.6000 ± 0.1000 | 0.4000 ± 0.1732 | +0.2000 [-0.0484, +0.4484] |  |  | "
                        "0.6000 ± 0.0000 |  |  |")
    assert lines[3].startswith("| 5 | 3 | 0.8000 ± 0.1000 | 0.6000 ± 0.1732 | +0.2000 [-0.0484, +0.4484] |  |  | 0.8000")


def test_averaged_last_epochs_is_an_ema_from_its_start_epoch(benchmark):
    from types import SimpleNamespace

    import torch

    segmenter = torch.nn.Conv3d(1, 2, 1)
    module = SimpleNamespace(segmenter=segmenter, hparams=SimpleNamespace(seg_batch_size=2))
    trainer = SimpleNamespace(current_epoch=0,
                              datamodule=SimpleNamespace(train_subjects=[{"image": torch.zeros(1, 2, 2, 2)}]))
    callback = benchmark.AveragedLastEpochs(start_epoch=1, decay=0.5)
    with torch.no_grad():
        segmenter.weight.fill_(8.0)
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_end(trainer, module)          # epoch 0: before the start, nothing averaged
    assert callback.ema.teacher is None
    trainer.current_epoch = 1
    callback.on_train_epoch_start(trainer, module)        # restart from the weights 8
    for value in (4.0, 0.0):
        with torch.no_grad():
            segmenter.weight.fill_(value)
        callback.on_train_batch_end(trainer, module)
    callback.on_train_end(trainer, module)
    assert torch.allclose(segmenter.weight, torch.full_like(segmenter.weight, (8 * 0.5 + 4 * 0.5) * 0.5))


def test_a_training_free_method_with_settings_is_a_row_and_a_comparison(benchmark, tmp_path):
    spec = "pyramid_mind:ice=1"
    records = [{"method": spec, "seed": 0, "dice": 0.70, "std_jac": 0.1, "sdlogj": 0.1, "fold_pct": 0.0,
                "seconds_per_pair": 1.0, "pairs": {"a": 0.70, "b": 0.60}}]
    records += [{"method": "jrss", "seed": seed, "seg_dice": 0.8, "dice": 0.6, "std_jac": 0.1, "sdlogj": 0.05,
                 "fold_pct": 0.0, "train_s": 60.0, "pairs": {"a": 0.65 + seed / 100, "b": 0.60}} for seed in (0, 1)]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    lines = benchmark.table(path).splitlines()
    assert any(line.startswith(f"| {spec} | 1 |  |  | 0.7000 |") for line in lines)
    # per pair: JRSS means 0.655 and 0.60 against 0.70 and 0.60 -> -0.045, 0.00
    comparison = next(line for line in lines if line.startswith(f"| JRSS − {spec} |"))
    assert comparison.startswith(f"| JRSS − {spec} | 2 | 0 | -0.0225 |")


def test_table_joins_record_files_and_skips_comparisons_without_label_groups(benchmark, tmp_path):
    """Prostate: training-free rows in their own file, no label groups (no ``seg_dice_grouped``)."""
    trained, training_free = tmp_path / "trained.jsonl", tmp_path / "training_free.jsonl"
    trained.write_text("\n".join(json.dumps(r) for seed, (jrss_seg, seg) in enumerate([(0.7, 0.6), (0.8, 0.6)])
                                 for r in ({"method": "jrss", "seed": seed, "seg_dice": jrss_seg, "dice": 0.6,
                                            "pairs": {"a": 0.6, "b": 0.7}},
                                           {"method": "mono_seg", "seed": seed, "seg_dice": seg, "dice": 0.5})))
    training_free.write_text(json.dumps({"method": "convex_adam", "seed": 0, "dice": 0.7,
                                         "pairs": {"a": 0.7, "b": 0.7}}))
    lines = benchmark.table(trained, training_free).splitlines()
    assert any(line.startswith("| convex_adam | 1 |  |  | 0.7000 |") for line in lines)
    assert any(line.startswith("| JRSS − mono_seg | seg_dice | +0.1000 / +0.2000 | +0.1500 |") for line in lines)
    assert not any("seg_dice_grouped |" in line for line in lines)
    # per pair: -0.1 and 0.0 -> mean -0.05
    assert any(line.startswith("| JRSS − convex_adam | 2 | 0 | -0.0500 |") for line in lines)


def test_a_later_record_file_replaces_the_runs_it_reruns_and_keeps_the_others(benchmark, tmp_path):
    first, rerun = tmp_path / "first.jsonl", tmp_path / "rerun.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in ({"method": "jrss", "seed": 0, "seg_dice": 0.3, "dice": 0.3},
                                                       {"method": "mono_reg", "seed": 0, "dice": 0.25})))
    rerun.write_text(json.dumps({"method": "jrss", "seed": 0, "seg_dice": 0.5, "dice": 0.4}))
    lines = benchmark.table(first, rerun).splitlines()
    assert any(line.startswith("| jrss | 1 | 0.5000 |  | 0.4000 |") for line in lines)
    assert any(line.startswith("| mono_reg | 1 |  |  | 0.2500 |") for line in lines)
    assert any(line.startswith("| JRSS − mono_reg | dice | +0.1500 |") for line in lines)


def test_refined_jrss_rows_have_no_training_time_and_their_own_per_pair_comparison(benchmark, tmp_path):
    """``--refine-adam N`` records (``refines: jrss``) are seeded rows after JRSS, ordered by N, compared
    per pair (averaged over seeds) with the training-free rows; they are not training-free rows themselves.
    SDlogJ is the plain form in every row (a trained run also logs Learn2Reg's clipped one as ``sdlogj``)."""
    records = [{"method": "convex_adam", "seed": 0, "dice": 0.70, "std_jac": 0.1, "sdlogj": 0.1, "fold_pct": 0.0,
                "seconds_per_pair": 5.0, "pairs": {"a": 0.70, "b": 0.60}}]
    for seed in (0, 1):
        records += [{"method": "jrss", "seed": seed, "dice": 0.6, "std_jac": 0.9, "sdlogj": 0.3, "sdlogj_plain": 0.9,
                     "fold_pct": 6.0, "train_s": 60.0, "pairs": {"a": 0.60, "b": 0.60}}]
        records += [{"method": f"jrss+adam{n}", "seed": seed, "refines": "jrss", "split": "test",
                     "dice": 0.6 + n / 1000, "std_jac": 0.4, "sdlogj": 0.2, "fold_pct": 0.1, "seconds_per_pair": 2.0,
                     "pairs": {"a": 0.70 + n / 1000 + seed / 100, "b": 0.62}} for n in (80, 20)]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    lines = benchmark.table(path).splitlines()
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:lines.index("")]]
    assert rows == ["convex_adam", "jrss", "jrss+adam20", "jrss+adam80"]
    jrss = next(line for line in lines if line.startswith("| jrss |")).split(" | ")
    assert jrss[6] == "0.9000 ± 0.0000"   # a trained run's plain SDlogJ, the form the other rows have
    refined = next(line for line in lines if line.startswith("| jrss+adam20 |"))
    assert refined == ("| jrss+adam20 | 2 |  |  | 0.6200 ± 0.0000 | 0.4000 ± 0.0000 | 0.2000 ± 0.0000 "
                       "| 0.1000 ± 0.0000 |  | 2.0000 ± 0.0000 |")
    # per pair, averaged over seeds: a 0.725 - 0.70, b 0.62 - 0.60 -> +0.025, +0.02
    comparison = next(line for line in lines if line.startswith("| jrss+adam20 − convex_adam |"))
    assert comparison.startswith("| jrss+adam20 − convex_adam | 2 | 2 | +0.0225 |")
    assert not any(line.startswith(("| JRSS − jrss+adam", "| jrss+adam20 − jrss+adam")) for line in lines)
