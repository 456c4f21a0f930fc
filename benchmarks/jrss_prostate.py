"""JRSS vs Mono-Seg / Mono-Reg on the real prostate MR scans (CPU-sized), one table.

Protocol (as in the paper: the Mono-Nets are pre-trained and initialise the joint models):
  1. Mono-Seg: segmenter on the N labelled training subjects (soft Dice), ``--seg-epochs``.
  2. Mono-Reg: registration, MSE + smooth_weight·diffusion + dice_weight·Dice on the labelled subjects' true labels
     (regframe.objectives.label_supervised_registration).
  3. JRSS: ``--rounds`` × (5 registration epochs, then 1 student epoch), initialised from 1 and 2.
  4. Equal-budget baselines: 1 and 2 continued (same mode) for as many steps as JRSS gave each network;
     ``mono_seg_equal_ema`` also ends with an EMA of its weights like the JRSS teacher (control).
  5. ``frozen_pseudo_reg`` (control isolating joint training): 2 continued for JRSS's registration steps
     with Dice on the screened pseudo labels of the frozen Mono-Seg segmenter (never updated).
The smooth_weight warm-up counts registration steps across runs (``estimator_init`` brings the step
count), so Mono-Reg, its continuations and JRSS share one warm-up and none restarts it.
Screening: a voxel keeps its pseudo label where the teacher's largest class probability exceeds ``--tau``.
JRSS teacher: the Mono-Seg segmenter, averaged towards the student with decay 0.99 (no ramp), with
its own BatchNorm statistics re-estimated after every student epoch (``bn_recalibration``); the
final segmenter is the teacher (``final_segmenter="teacher"``; the student is reported too). These
choices were made on the validation subjects (seeds 0 and 1), never on the test subjects.
Student CE: the paper's class-weighted CE; ``--unweighted-ce`` runs plain CE (row ``jrss_unweighted_ce``).
On validation (student-only runs from the Mono-Nets, teacher Dice) weighted CE was slightly better:
0.764 vs 0.759 (seed 0), 0.732 vs 0.727 (seed 1).
Split (``--split``): 56 train / 8 validation / 16 test cases (seeded, seed 0). Evaluation: segmentation
Dice of the gland per validation and per test subject, registration Dice of warped moving gland
labels per unordered test pair (120 pairs).

    OMP_NUM_THREADS=1 python -m benchmarks.jrss_prostate --seeds 0 --out runs/jrss_prostate
    OMP_NUM_THREADS=1 python -m benchmarks.jrss_prostate --seeds 0 --out runs/jrss_prostate --teacher-input warped
    python -m benchmarks.jrss_prostate --table-only --out runs/jrss_prostate   # merge seeds, print table
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from callbacks.ema import EMATeacher
from data_modules.paired import PairedDataModule
from regframe.estimators.obelisk_regressor import ObeliskRegressor
from regframe.methods.joint_seg_reg import JointSegRegSelfTraining
from regframe.metrics import dice_per_label, pair_metrics
from regframe.segmenters import NetworkSegmenter
from regframe.segmenters.dropout import recalibrate_batchnorm

DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/jrss_prostate"))
    parser.add_argument("--num-labelled", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=16)
    parser.add_argument("--seg-epochs", type=int, default=30)
    parser.add_argument("--reg-epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--crop", type=int, default=48, help="centred crop of the 69x69x64 MR (voxels)")
    parser.add_argument("--factor", type=float, default=0.5, help="resampling factor after the crop")
    parser.add_argument("--split", type=int, nargs=3, default=[56, 8, 16], help="train / val / test case counts")
    parser.add_argument("--unweighted-ce", action="store_true",
                        help="plain student CE instead of the paper's class-weighted CE (row jrss_unweighted_ce)")
    parser.add_argument("--tau", type=float, default=0.6, help="pseudo-label screening threshold")
    parser.add_argument("--teacher-input", choices=["clean", "warped"], default="clean",
                        help="the teacher labels the unwarped (clean, paper) or the warped moving image "
                             "(row jrss_warped_teacher)")
    parser.add_argument("--table-only", action="store_true")
    return parser.parse_args()


def build_module(args: argparse.Namespace, seed: int, **kwargs) -> JointSegRegSelfTraining:
    pl.seed_everything(seed, workers=True)
    options = dict(num_labelled=args.num_labelled, labelled_seed=seed, seg_pretrain_epochs=args.seg_epochs,
                   reg_pretrain_epochs=args.reg_epochs, rounds=args.rounds, warmup_steps=args.warmup_steps,
                   tau=args.tau, compute_hd95=False)
    options.update(kwargs)
    return JointSegRegSelfTraining(ObeliskRegressor(spatial_dims=3), NetworkSegmenter(2, spatial_dims=3), **options)


def fit(module: JointSegRegSelfTraining, datamodule: PairedDataModule, args: argparse.Namespace,
        checkpoint: Path, callbacks: list[pl.Callback] = ()) -> float:
    """Train for ``module.schedule.total_epochs`` and save the checkpoint; returns wall seconds."""
    callbacks = list(callbacks)
    if module.hparams.mode == "joint":   # the Mono-Seg teacher is kept and averaged (no ramp), own BN statistics
        callbacks.append(EMATeacher(decay=0.99, ramp=False, buffers="keep"))
    trainer = pl.Trainer(max_epochs=module.schedule.total_epochs, limit_train_batches=args.steps_per_epoch,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=checkpoint.parent)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    trainer.save_checkpoint(checkpoint)
    return time.perf_counter() - start


class KeepStudent(pl.Callback):
    """Keeps a copy of the segmenter as it is when training ends, before ``final_segmenter="teacher"``
    replaces it with the EMA teacher (so the student can be reported next to the teacher)."""

    def __init__(self) -> None:
        self.student: torch.nn.Module | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.student = copy.deepcopy(pl_module.segmenter)


class AveragedSegmenter(pl.Callback):
    """Control for the JRSS teacher: an EMA copy of the segmenter (decay 0.99, no ramp, updated after every
    batch, BatchNorm statistics re-estimated on the training images at the end) replaces the segmenter
    when training ends. Tells how much of JRSS's gain is weight averaging alone."""

    def __init__(self) -> None:
        self.ema = EMATeacher(decay=0.99, ramp=False, buffers="keep")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ema.reset(pl_module.segmenter)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.ema.update(pl_module.segmenter)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        recalibrate_batchnorm(self.ema.teacher, [s["image"] for s in trainer.datamodule.train_subjects])
        pl_module.segmenter.load_state_dict(self.ema.teacher.state_dict())


def seg_dice(segmenter: torch.nn.Module, subjects: list[dict]) -> float:
    """Mean gland Dice of ``segmenter`` (eval mode) over ``subjects``."""
    segmenter.eval()
    scores = []
    for subject in subjects:
        predicted = segmenter(subject["image"][None]).argmax(dim=1)
        scores.append(dice_per_label(subject["label"][0], predicted[0], [1])[1])
    return statistics.fmean(scores)


@torch.no_grad()
def evaluate(module: JointSegRegSelfTraining, datamodule: PairedDataModule) -> dict[str, float]:
    """Gland Dice of the segmenter per validation and per test subject, and of registration per test pair."""
    module.eval()
    reg, initial, sdlogj = [], [], []
    for f, m in datamodule.test_pairs:
        fixed, moving = datamodule.test_subjects[f], datamodule.test_subjects[m]
        disp = module.estimator(fixed["image"][None], moving["image"][None])
        labels = (fixed["label"][None], moving["label"][None])
        metrics = pair_metrics(*labels, disp, fixed["spacing"], hd95=False)
        reg.append(metrics["dice"])
        sdlogj.append(metrics["sdlogj"])
        initial.append(pair_metrics(*labels, torch.zeros_like(disp), fixed["spacing"], hd95=False)["dice"])
    mean = statistics.fmean
    return {"seg_dice": seg_dice(module.segmenter, datamodule.test_subjects),
            "seg_dice_val": seg_dice(module.segmenter, datamodule.val_subjects),
            "reg_dice": mean(reg), "initial_dice": mean(initial), "sdlogj": mean(sdlogj)}


def run_seed(args: argparse.Namespace, seed: int, datamodule: PairedDataModule) -> None:
    out = args.out / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    extra_seg, extra_reg = args.rounds * 1, args.rounds * 5
    jrss_name = ("jrss" + ("_unweighted_ce" if args.unweighted_ce else "")
                 + ("_warped_teacher" if args.teacher_input == "warped" else ""))
    runs = [  # name, module options, checkpoint inputs
        ("mono_seg", dict(mode="mono_seg"), {}),
        ("mono_reg", dict(mode="mono_reg"), {}),
        (jrss_name,
         dict(mode="joint", seg_pretrain_epochs=0, reg_pretrain_epochs=0, student_dropout=0.5,
              ce_class_weighting=not args.unweighted_ce, bn_recalibration=True, final_segmenter="teacher",
              teacher_input=args.teacher_input),
         {"segmenter_init": "mono_seg", "estimator_init": "mono_reg"}),
        ("frozen_pseudo_reg", dict(mode="frozen_pseudo_reg", seg_pretrain_epochs=0, reg_pretrain_epochs=0),
         {"segmenter_init": "mono_seg", "estimator_init": "mono_reg"}),
        ("mono_seg_equal", dict(mode="mono_seg", seg_pretrain_epochs=extra_seg), {"segmenter_init": "mono_seg"}),
        ("mono_seg_equal_ema", dict(mode="mono_seg", seg_pretrain_epochs=extra_seg), {"segmenter_init": "mono_seg"}),
        ("mono_reg_equal", dict(mode="mono_reg", reg_pretrain_epochs=extra_reg),
         {"estimator_init": "mono_reg"}),
    ]
    for name, options, inits in runs:
        result_file = out / f"{name}.json"
        if result_file.exists():
            continue
        options.update({key: str(out / f"{source}.ckpt") for key, source in inits.items()})
        module = build_module(args, seed, **options)
        keep = KeepStudent()
        extra = [AveragedSegmenter()] if name == "mono_seg_equal_ema" else []
        seconds = fit(module, datamodule, args, out / f"{name}.ckpt", [keep, *extra])
        result = evaluate(module, datamodule) | {"train_seconds": seconds, "seed": seed,
                                                  "labelled_ids": module.hparams["labelled_ids"]}
        if options["mode"] == "joint":
            with torch.no_grad():
                result |= {"student_seg_dice": seg_dice(keep.student, datamodule.test_subjects),
                           "student_seg_dice_val": seg_dice(keep.student, datamodule.val_subjects)}
        result_file.write_text(json.dumps(result, indent=1))
        print(name, seed, json.dumps(result), flush=True)


def table(out: Path) -> str:
    """Markdown table (mean ± std over seeds) and per-seed values of the runs saved under ``out``."""
    rows = {}
    for path in sorted(out.glob("seed*/*.json")):
        rows.setdefault(path.stem, []).append(json.loads(path.read_text()) | {"name": path.stem})
    keys = ("seg_dice_val", "seg_dice", "student_seg_dice", "reg_dice", "initial_dice", "sdlogj", "train_seconds")

    def untrained(name: str, key: str) -> bool:
        return ((key.startswith(("seg", "student")) and name.startswith(("mono_reg", "frozen_pseudo_reg")))
                or (key in ("reg_dice", "sdlogj") and name.startswith("mono_seg")))

    def cell(results: list[dict], key: str) -> str:
        if untrained(results[0]["name"], key) or key not in results[0]:
            return "–"
        values = [r[key] for r in results]
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.3f}{spread}"

    lines = ["| run | seeds | seg Dice (val subjects) | seg Dice (test subjects) | student seg Dice (test) | "
             "reg Dice (test pairs) | initial Dice | SDlogJ | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_seed = []
    for name in ("mono_seg", "mono_seg_equal", "mono_seg_equal_ema", "mono_reg", "mono_reg_equal",
                 "frozen_pseudo_reg", "jrss_unweighted_ce", "jrss_warped_teacher", "jrss"):
        if name in rows:
            r = rows[name]
            lines.append(f"| {name} | {','.join(str(x['seed']) for x in r)} | "
                         + " | ".join(cell(r, key) for key in keys) + " |")
            for key in ("seg_dice", "reg_dice"):
                if not untrained(name, key):
                    per_seed.append(f"{name} {key}: " + " / ".join(f"{x[key]:.3f}" for x in r))
    return "\n".join(lines + ["", "Per seed (" + ", ".join(f"seed {x['seed']}" for x in rows.get("mono_seg", []))
                               + "):"] + per_seed)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if not args.table_only:
        datamodule = PairedDataModule(root=str(DATA / "prostate_mr_us"), pair_kind="moving-moving", pair_order="ordered",
                                      target_shape=(args.crop,) * 3, resample_factor=args.factor, label_channel=0,
                                      batch_size=2, seed=0, split=tuple(args.split))
        datamodule.setup("fit")
        for seed in args.seeds:
            run_seed(args, seed, datamodule)
    print(table(args.out))


if __name__ == "__main__":
    main()
