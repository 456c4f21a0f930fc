"""Mono-Seg on LPBA40 as the JRSS teacher: how its pseudo labels would be screened, scored on subjects
that are not test subjects (the probe that chose ``seg_ce_weight`` in ``experiments/lpba40_jrss.yaml``).

Trains ``mode=mono_seg`` for 33 epochs (what ``jrss_benchmark.py`` gives the Mono-Seg control) with the
given ``--seg-ce-weight``, then, on the unlabelled training subjects and on the validation subjects
(S39, S40), reports: the mean Dice over the structures in each true map (56-class argmax), the share of
background and of foreground voxels whose largest class probability exceeds τ = 0.7 (what JRSS keeps as
pseudo labels), the accuracy of the kept voxels, the mean confidence on the background, and the largest
number of background voxels labelled as one structure (the "flood"). The unlabelled subjects' labels
are read here for this diagnosis only; training never reads them. One JSON line per run to ``--out``:

    OMP_NUM_THREADS=1 python benchmarks/jrss_lpba40_mono_seg_probe.py --seg-ce-weight 0 &
    OMP_NUM_THREADS=1 python benchmarks/jrss_lpba40_mono_seg_probe.py --seg-ce-weight 1

``--config`` probes another JRSS config the same way (the abdomen one, with ``--no-validation``: its
validation subjects are its test subjects, so only the unlabelled training subjects are scored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jrss_benchmark import config_args

from regframe.cli import RegframeCLI
from regframe.job_shards import quiet_run_options
from regframe.metrics import dice_per_label

CONFIG = "experiments/lpba40_jrss.yaml"


def teacher_statistics(segmenter: torch.nn.Module, subjects: list[dict], tau: float) -> dict[str, float]:
    """Screening statistics of ``segmenter`` as a teacher on ``subjects`` (each with ``image`` and ``label``)."""
    dice, confidence, flood = [], [], []
    kept = {"background": 0, "foreground": 0}
    total = {"background": 0, "foreground": 0}
    kept_correct = 0
    for subject in subjects:
        with torch.no_grad():
            probs = segmenter(subject["image"][None].float()).softmax(dim=1)[0]
        top, predicted = probs.max(dim=0)
        truth = subject["label"][0].long()
        present = [c for c in truth.unique().tolist() if c > 0]
        dice.append(statistics.fmean(dice_per_label(truth, predicted, present).values()))
        keep, foreground = top > tau, truth > 0
        for name, region in (("background", ~foreground), ("foreground", foreground)):
            kept[name] += int((keep & region).sum())
            total[name] += int(region.sum())
        kept_correct += int((keep & (predicted == truth)).sum())
        confidence.append(float(top[~foreground].mean()))
        flooded = predicted[~foreground]
        flood.append(int(torch.bincount(flooded[flooded > 0], minlength=2).max()))
    return {"dice": statistics.fmean(dice), "background_kept": kept["background"] / total["background"],
            "foreground_kept": kept["foreground"] / total["foreground"],
            "kept_accuracy": kept_correct / max(kept["background"] + kept["foreground"], 1),
            "background_confidence": statistics.fmean(confidence), "largest_flood_voxels": max(flood)}


def probe(seg_ce_weight: float, seed: int, run_dir: Path, config: Sequence[str] = (CONFIG,),
          validation: bool = True) -> dict[str, Any]:
    """Train Mono-Seg and score it as a teacher; the validation subjects only with ``validation``."""
    args = [*config_args(config), "--model.init_args.mode", "mono_seg",
            "--model.init_args.seg_pretrain_epochs", "33", "--trainer.max_epochs", "33",
            "--model.init_args.seg_ce_weight", str(seg_ce_weight), "--seed_everything", str(seed),
            "--model.init_args.labelled_seed", str(seed), *quiet_run_options(run_dir / f"ce{seg_ce_weight}_{seed}")]
    cli = RegframeCLI(args=args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record: dict[str, Any] = {"config": list(config), "seg_ce_weight": seg_ce_weight, "seed": seed,
                              "train_s": time.perf_counter() - start, "threads": torch.get_num_threads()}
    segmenter = cli.model.segmenter.eval()
    labelled = set(cli.model.hparams["labelled_ids"])
    tau = float(cli.model.hparams["tau"])
    datamodule = cli.datamodule
    unlabelled = [s for s in datamodule.train_subjects if s["id"] not in labelled]
    record["unlabelled_training"] = teacher_statistics(segmenter, unlabelled, tau)
    if validation:
        record["validation"] = teacher_statistics(segmenter, datamodule.val_subjects, tau)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seg-ce-weight", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", nargs="+", default=[CONFIG],
                        help="JRSS config files, composed in order (e.g. the abdomen config and its CPU overlay)")
    parser.add_argument("--no-validation", action="store_true",
                        help="unlabelled training subjects only (where the validation subjects are also the test "
                             "subjects, as in the abdomen config)")
    parser.add_argument("--out", type=Path, default=Path("runs/jrss_lpba40_mono_seg_probe.jsonl"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/jrss_lpba40_mono_seg_probe"))
    args = parser.parse_args()
    record = probe(args.seg_ce_weight, args.seed, args.run_dir, args.config, validation=not args.no_validation)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
