"""JRSS against Mono-Seg, Mono-Reg and the controls with a shipped JRSS config: ``--config``, by default
``experiments/lpba40_jrss.yaml`` (LPBA40); ``experiments/prostate_jrss.yaml`` (prostate MR);
``experiments/abdomen_jrss.yaml experiments/abdomen_jrss_cpu.yaml`` (abdomen CT).

Each job (method, seed) trains through ``RegframeCLI`` (what ``regframe fit --config ...`` runs, W&B
off) and then tests the trained model in memory on the config's held-out test subjects (LPBA40: 8
subjects, 12 registration pairs: 2 fixed × 6 moving; segmentation of every test subject as fixed and
moving image).
The in-memory model is the run's final checkpoint (for JRSS: segmenter = EMA teacher,
``final_segmenter="teacher"``). One JSON line per job goes to ``--out``.

Methods, all with the config's N = 5 labelled subjects (drawn with ``labelled_seed`` = the seed):
- ``jrss``: the shipped config (Mono-Seg 30 epochs, Mono-Reg 15, then 3 × (5 registration + 1 student)).
- ``mono_seg``: the segmenter alone for 33 epochs, the steps JRSS gives its segmenter (30 + 3).
- ``mono_reg``: registration alone (MSE + diffusion + Dice on the labelled subjects) for 30 epochs,
  the steps JRSS gives its registration network (15 + 3 × 5), with the same warm-up: the weakly
  supervised VoxelMorph-style control on the N labelled subjects.
- ``mono_seg_ema``: ``mono_seg`` whose final segmenter is an EMA like JRSS's teacher: restarted from the
  segmenter after 30 epochs, averaged (decay 0.99) over the 48 steps of the last 3 epochs, BatchNorm
  statistics re-estimated: tells how much of JRSS's segmentation gain is weight averaging alone.
- ``frozen_pseudo_reg``: JRSS's stages without the student epochs (Mono-Seg 30, Mono-Reg 15, then 15
  registration epochs on the screened pseudo labels of the Mono-Seg segmenter, never updated): the same
  registration steps with pseudo labels that joint training never improves.
``--refine-adam N ...`` scores each trained JRSS seed's registration refined by N iterations of
``pyramid_mind``'s Adam stage (``regframe register --adam N``), on ``--split val`` (to choose N) or test.
``--training-free identity pyramid_mind convex_adam`` scores training-free methods on the same test pairs
(``identity``: unregistered) at the config's resolution. ``--write-test-dataset FOLDER`` writes the test
split as a Learn2Reg folder for ``regframe register --dataset`` / ``regframe evaluate`` at full resolution.
``--atlas`` and ``--write-test-dataset`` need a Learn2Reg config (LPBA40). ``--num-labelled N`` changes N
(one ``--out`` file per N). ``--table`` prints mean ± sd over seeds and the per-seed paired differences
JRSS − control with a 95 % t interval. Run one process per core:

    OMP_NUM_THREADS=1 python benchmarks/jrss_benchmark.py --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/jrss_benchmark.py --shard 1/2
    python benchmarks/jrss_benchmark.py --training-free identity pyramid_mind convex_adam
    python benchmarks/jrss_benchmark.py --table [MORE_RECORD_FILES ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from callbacks.ema import EMATeacher
from regframe.checkpoint import read_checkpoint
from regframe.cli import RegframeCLI
from regframe.errors import RegframeInputError
from regframe.estimators.registry import TRAINING_FREE, build_training_free, mind_refined, parse_method
from regframe.job_shards import append_record, pending_jobs, quiet_run_options
from regframe.label_groups import grouped_dice, named_groups
from regframe.methods.base import RegistrationModule
from regframe.metrics import dice_per_label, pair_metrics
from regframe.paired_statistics import paired_interval
from regframe.register import CheckpointEstimator, read_method_checkpoint, rebuild_method
from regframe.segmenters.dropout import recalibrate_batchnorm
from regframe.spatial import warp_labels

CONFIG = ("experiments/lpba40_jrss.yaml",)   # config files, composed in order
METHODS = {  # method -> options after the shipped config
    "jrss": [],
    "mono_seg": ["--model.init_args.mode", "mono_seg", "--model.init_args.seg_pretrain_epochs", "33",
                 "--trainer.max_epochs", "33"],
    "mono_reg": ["--model.init_args.mode", "mono_reg", "--model.init_args.reg_pretrain_epochs", "30",
                 "--trainer.max_epochs", "30"],
    "frozen_pseudo_reg": ["--model.init_args.mode", "frozen_pseudo_reg", "--trainer.max_epochs", "60"],
}
METHODS["mono_seg_ema"] = METHODS["mono_seg"]   # + AveragedLastEpochs: the weight averaging of JRSS's teacher
SEGMENTATION_METHODS = ("jrss", "mono_seg", "mono_seg_ema")
SEGMENTATION = ("seg_dice", "seg_dice_grouped")   # meaningful for SEGMENTATION_METHODS
REGISTRATION = ("dice", "std_jac", "sdlogj", "fold_pct")  # for every method but the Mono-Seg ones


class AveragedLastEpochs(pl.Callback):
    """The segmenter becomes an EMA of itself over the epochs from ``start_epoch`` on (JRSS's teacher
    without joint training): restarted at that epoch, one update per step, BatchNorm statistics
    re-estimated on the training images when training ends."""

    def __init__(self, start_epoch: int, decay: float = 0.99) -> None:
        self.start_epoch = start_epoch
        self.ema = EMATeacher(decay=decay, ramp=False, buffers="keep")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.start_epoch:
            self.ema.reset(pl_module.segmenter)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.current_epoch >= self.start_epoch:
            self.ema.update(pl_module.segmenter)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema.teacher is None:
            raise RuntimeError(f"AveragedLastEpochs: training ended before epoch {self.start_epoch}")
        recalibrate_batchnorm(self.ema.teacher, [s["image"] for s in trainer.datamodule.train_subjects],
                              pl_module.hparams.seg_batch_size)
        pl_module.segmenter.load_state_dict(self.ema.teacher.state_dict())


def config_args(config: Sequence[str]) -> list[str]:
    """``--config FILE`` for each file of ``config``."""
    return [arg for file in config for arg in ("--config", file)]


def run_job(method: str, seed: int, run_dir: Path, num_labelled: int = 5,
            config: Sequence[str] = CONFIG) -> dict[str, Any]:
    args = [*config_args(config), *METHODS[method], "--seed_everything", str(seed),
            "--model.init_args.labelled_seed", str(seed), "--model.init_args.num_labelled", str(num_labelled),
            *quiet_run_options(run_dir / f"{method}_n{num_labelled}_{seed}")]
    cli = RegframeCLI(args=args, run=False)
    if method == "mono_seg_ema":
        cli.trainer.callbacks.append(AveragedLastEpochs(start_epoch=30))
    record: dict[str, Any] = {"method": method, "seed": seed, "num_labelled": num_labelled,
                              "threads": torch.get_num_threads()}
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    record["train_s"] = time.perf_counter() - start
    record["steps"] = cli.trainer.global_step
    record["labelled_ids"] = list(cli.model.hparams["labelled_ids"])
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    record.update({key.removeprefix("test/"): float(value) for key, value in tested.items()})
    record["pairs"] = {r["pair_id"]: r["dice"] for r in cli.model.pair_records}
    return record


def config_datamodule(*stages: str, config: Sequence[str] = CONFIG) -> Any:
    """The data module of ``config``, set up for ``stages`` (``"fit"``, ``"test"``)."""
    datamodule = RegframeCLI(args=[*config_args(config), "--trainer.logger", "false"], run=False).datamodule
    for stage in stages:
        datamodule.setup(stage)
    return datamodule


def pairs_record(estimator: Any, datamodule: Any, split: str = "test") -> dict[str, Any]:
    """Registration scores of ``estimator`` on the ``split`` (``"val"`` or ``"test"``) pairs of ``datamodule``
    at its resolution: means over pairs, Dice per pair, seconds per pair of the registration call (median)."""
    subjects = getattr(datamodule, f"{split}_subjects")
    pairs, scores, seconds = {}, [], []
    for fixed, moving in getattr(datamodule, f"{split}_pairs"):
        f, m = subjects[fixed], subjects[moving]
        start = time.perf_counter()
        with torch.no_grad():
            field = estimator(f["image"][None].float(), m["image"][None].float())
        seconds.append(time.perf_counter() - start)
        metrics = pair_metrics(f["label"][None], m["label"][None], field, f["spacing"].tolist(), hd95=False)
        pairs[f"{f['id']}_{m['id']}"] = metrics["dice"]
        scores.append(metrics)
    record = {"threads": torch.get_num_threads(), "pairs": pairs, "seconds_per_pair": statistics.median(seconds)}
    record.update({key: statistics.fmean(s[key] for s in scores) for key in REGISTRATION})
    return record


def training_free_record(name: str, config: Sequence[str] = CONFIG) -> dict[str, Any]:
    """Scores of the training-free method ``name`` (``identity``: the test pairs unregistered) on the test
    pairs of the config's data at its resolution (LPBA40: quarter), the grid JRSS is scored on."""
    estimator = build_training_free(name).eval()
    return {"method": name, "seed": 0, **pairs_record(estimator, config_datamodule("test", config=config))}


def final_checkpoint(run: Path) -> Path:
    """The checkpoint of the last epoch a run under ``run`` (``regframe fit``'s default_root_dir) saved."""
    found = sorted(run.rglob("*.ckpt"), key=lambda path: read_checkpoint(path)["global_step"])
    if not found:
        raise RegframeInputError(f"{run}: no checkpoint; train the run first (--methods jrss)")
    return found[-1]


def refined_record(seed: int, adam_iterations: int, run_dir: Path, datamodule: Any, split: str,
                   num_labelled: int = 5) -> dict[str, Any]:
    """The trained JRSS run ``seed``'s registration (its final checkpoint under ``run_dir``, as
    ``regframe register --checkpoint CKPT --adam N`` loads it) refined by ``adam_iterations`` of
    ``pyramid_mind``'s Adam stage on MIND-SSC, scored on the ``split`` pairs of ``datamodule`` (the
    config's, set up); 0 = the network alone."""
    checkpoint = final_checkpoint(run_dir / f"jrss_n{num_labelled}_{seed}")
    method, _ = read_method_checkpoint(checkpoint, (RegistrationModule,))
    estimator = mind_refined(CheckpointEstimator(rebuild_method(checkpoint, method)), adam_iterations).eval()
    record = pairs_record(estimator, datamodule, split)
    return {"method": f"jrss+adam{adam_iterations}", "seed": seed, "num_labelled": num_labelled, "refines": "jrss",
            "split": split, "checkpoint": str(checkpoint), **record}


def labelled_training_subjects(datamodule: Any, seed: int, num_labelled: int) -> list[dict]:
    """The labelled training subjects of a run with ``labelled_seed = seed``: the same draw as
    :class:`~regframe.methods.joint_seg_reg.JointSegRegSelfTraining` (``random.Random(seed).sample``
    of the training subjects that have labels, sorted)."""
    subjects = datamodule.train_subjects
    with_labels = [i for i, s in enumerate(subjects) if s.get("label") is not None]
    return [subjects[i] for i in sorted(random.Random(seed).sample(with_labels, num_labelled))]


@torch.no_grad()
def atlas_record(name: str, seed: int, num_labelled: int) -> dict[str, Any]:
    """Multi-atlas segmentation baseline: the N labelled training subjects of ``seed`` (atlases) are
    registered to every test subject by the training-free method ``name``, their labels warped (nearest
    neighbour) and fused by majority vote (ties: the lower class); scored like the segmenters, on the
    fixed and the moving image of every test pair (56 structures; 10 groups)."""
    datamodule = config_datamodule("fit", "test")
    atlases = labelled_training_subjects(datamodule, seed, num_labelled)
    estimator = build_training_free(name).eval()
    num_classes = len(datamodule.label_codes) + 1
    codes = torch.tensor([0, *datamodule.label_codes])
    groups = named_groups("lpba40")
    segmentations = {}
    for index, subject in enumerate(datamodule.test_subjects):
        votes = torch.zeros(num_classes, *subject["label"].shape[1:])
        for atlas in atlases:
            field = estimator(subject["image"][None].float(), atlas["image"][None].float())
            warped = warp_labels(atlas["label"][None].long(), field)[0, 0]
            votes += F.one_hot(warped, num_classes).movedim(-1, 0)
        segmentations[index] = votes.argmax(dim=0)
    scores, grouped = [], defaultdict(list)
    for pair in datamodule.test_pairs:
        for index in pair:
            truth = datamodule.test_subjects[index]["label"][0].long()
            predicted = segmentations[index]
            scores += dice_per_label(truth, predicted, [c for c in truth.unique().tolist() if c > 0]).values()
            for group, value in grouped_dice(codes[truth], codes[predicted], groups).items():
                grouped[group].append(value)
    return {"method": f"atlas_{name}", "seed": seed, "num_labelled": num_labelled,
            "labelled_ids": [a["id"] for a in atlases], "seg_dice": statistics.fmean(scores),
            "seg_dice_grouped": statistics.fmean(statistics.fmean(v) for v in grouped.values())}


def write_test_dataset(folder: Path) -> Path:
    """A Learn2Reg folder holding only the config's test split: ``LPBA40_dataset.json`` whose ``training``
    lists the test subjects and whose ``registration_val`` lists the test pairs (each of the first
    ``test_fixed`` subjects fixed, every other test subject moving), beside links to the shared
    ``imagesTr``/``labelsTr`` folders; what ``regframe register --dataset`` and ``regframe evaluate`` read."""
    data = config_datamodule()
    source = Path(data.dataset_json).resolve()
    spec = json.loads(source.read_text())
    ids = data.test_subject_ids
    fixed_count = data.test_fixed

    def image(subject: str) -> str:
        return f"./imagesTr/LPBA40_{subject}_0000.nii.gz"

    spec["training"] = [entry for entry in spec["training"] if entry["image"] in {image(i) for i in ids}]
    spec["numTraining"] = len(spec["training"])
    spec["registration_val"] = [{"fixed": image(f), "moving": image(m)} for f in ids[:fixed_count]
                                for m in ids if m not in ids[:fixed_count]]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("imagesTr", "labelsTr"):
        link = folder / name
        if not link.exists():
            link.symlink_to(source.parent / name, target_is_directory=True)
    path = folder / "LPBA40_dataset.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def table(*paths: Path) -> str:
    """Mean ± sd over seeds per method, JRSS − control per seed and JRSS − training-free per pair, from the
    records of ``paths`` (e.g. the trained runs and the training-free rows in separate files); a record of a
    later file replaces one of the same method and seed in an earlier file (a rerun of some methods). SDlogJ
    is ``std(log det)`` over the non-folded voxels for every row (:func:`regframe.metrics.jacobian_metrics`)."""
    records = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    by_method: dict[str, dict[int, dict]] = {}
    for record in records:
        if "sdlogj_plain" in record:   # a trained run's "sdlogj" is Learn2Reg's clipped form; pairs_record's is plain
            record["sdlogj"] = record["sdlogj_plain"]
        by_method.setdefault(record["method"], {})[record["seed"]] = record
    keys = [("seg_dice", "seg Dice"), ("seg_dice_grouped", "seg Dice (groups)"),
            ("dice", "reg Dice"), ("std_jac", "Std(Jac)"), ("sdlogj", "SDlogJ"), ("fold_pct", "fold %"),
            ("train_s", "train min"), ("seconds_per_pair", "s per pair")]
    lines = ["| method | seeds | " + " | ".join(title for _, title in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    atlases = sorted(m for m in by_method if m.startswith("atlas_"))
    refined = sorted((m for m in by_method if any("refines" in r for r in by_method[m].values())),
                     key=lambda m: int(m.removeprefix("jrss+adam")))
    training_free = [m for m in by_method if m not in METHODS and m not in atlases and m not in refined]
    for method in (*training_free, *METHODS, *refined, *atlases):
        runs = by_method.get(method, {})
        if not runs:
            continue
        cells = []
        for key, _ in keys:
            segmentation_only = method.startswith(("mono_seg", "atlas_"))
            applicable = not ((method not in SEGMENTATION_METHODS and not segmentation_only and key in SEGMENTATION) or
                              (segmentation_only and key in REGISTRATION))
            values = [r[key] / (60.0 if key == "train_s" else 1.0) for r in runs.values() if key in r]
            if not values or not applicable:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4f}" if key not in ("train_s", "seconds_per_pair") else f"{values[0]:.1f}")
            else:
                cells.append(f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "| JRSS − control (per seed) | metric | differences | mean | 95 % CI |", "|---|---|---|---|---|"]
    for control, key in (("mono_seg", "seg_dice"), ("mono_seg", "seg_dice_grouped"), ("mono_seg_ema", "seg_dice"),
                         ("mono_seg_ema", "seg_dice_grouped"), ("mono_reg", "dice"),
                         ("frozen_pseudo_reg", "dice"), *((a, "seg_dice") for a in atlases)):
        seeds = sorted(s for s in set(by_method.get("jrss", {})) & set(by_method.get(control, {}))
                       if key in by_method["jrss"][s] and key in by_method[control][s])   # no label groups: no row
        if not seeds:
            continue
        differences = [by_method["jrss"][s][key] - by_method[control][s][key] for s in seeds]
        mean, low, high = paired_interval(differences)
        lines.append(f"| JRSS − {control} | {key} | {' / '.join(f'{d:+.4f}' for d in differences)} | {mean:+.4f} "
                     f"| [{low:+.4f}, {high:+.4f}] |")
    lines += ["", "| JRSS (+ Adam) − training-free (per pair, averaged over seeds) | pairs | JRSS higher | mean "
              "| 95 % CI |", "|---|---|---|---|---|"]
    for learned in ("jrss", *refined):
        runs = list(by_method.get(learned, {}).values())
        for name in training_free:
            reference = by_method.get(name, {}).get(0, {}).get("pairs")
            if name == "identity" or not reference or not runs or not all("pairs" in r for r in runs):
                continue
            differences = [statistics.fmean(r["pairs"][pair] for r in runs) - dice for pair, dice in reference.items()]
            mean, low, high = paired_interval(differences)
            label = "JRSS" if learned == "jrss" else learned
            lines.append(f"| {label} − {name} | {len(differences)} | {sum(d > 0 for d in differences)} "
                         f"| {mean:+.4f} | [{low:+.4f}, {high:+.4f}] |")
    return "\n".join(lines)


def table_by_n(paths: list[Path]) -> str:
    """One row per N labelled (the records' ``num_labelled``): JRSS, Mono-Seg and multi-atlas
    (``atlas_pyramid_mind``) segmentation Dice, JRSS and Mono-Reg registration Dice (mean ± sd over seeds) and JRSS − control
    per seed (mean, 95 % t interval) where both ran on the same seeds; the paper's Fig. 3 as a table.
    Records without ``num_labelled`` are from before ``--num-labelled`` existed: N = 5, its default."""
    by_n: dict[int, dict[str, dict[int, dict]]] = {}
    for path in paths:
        for record in (json.loads(line) for line in path.read_text().splitlines() if line.strip()):
            if record["method"] in METHODS or record["method"] == "atlas_pyramid_mind":
                by_n.setdefault(record.get("num_labelled", 5), {}).setdefault(record["method"], {})[record["seed"]] = record

    def spread(runs: dict[int, dict], key: str) -> str:
        values = [r[key] for r in runs.values()]
        if len(values) < 2:
            return f"{values[0]:.4f}" if values else ""
        return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"

    def difference(runs: dict[str, dict[int, dict]], control: str, key: str) -> str:
        seeds = sorted(set(runs.get("jrss", {})) & set(runs.get(control, {})))
        if len(seeds) < 2:
            return ""
        mean, low, high = paired_interval([runs["jrss"][s][key] - runs[control][s][key] for s in seeds])
        return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"

    lines = ["| N | seeds | seg JRSS | seg Mono-Seg | JRSS − Mono-Seg | seg multi-atlas | JRSS − multi-atlas "
             "| reg JRSS | reg Mono-Reg | JRSS − Mono-Reg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n, runs in sorted(by_n.items()):
        lines.append(f"| {n} | {len(runs.get('jrss', {}))} | {spread(runs.get('jrss', {}), 'seg_dice')} | "
                     f"{spread(runs.get('mono_seg', {}), 'seg_dice')} | {difference(runs, 'mono_seg', 'seg_dice')} | "
                     f"{spread(runs.get('atlas_pyramid_mind', {}), 'seg_dice')} | "
                     f"{difference(runs, 'atlas_pyramid_mind', 'seg_dice')} | "
                     f"{spread(runs.get('jrss', {}), 'dice')} | {spread(runs.get('mono_reg', {}), 'dice')} | "
                     f"{difference(runs, 'mono_reg', 'dice')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=list(CONFIG),
                        help="JRSS experiment files, composed in order, whose stage plan is 30 + 15 + 3 × (5 + 1) "
                             "epochs (e.g. experiments/prostate_jrss.yaml)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--num-labelled", type=int, default=5,
                        help="N labelled training subjects (the paper: 1, 3, 5, 7); one --out file per N")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    parser.add_argument("--out", type=Path, default=Path("runs/jrss_lpba40.jsonl"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/jrss_lpba40"))
    parser.add_argument("--training-free", nargs="+", metavar="NAME",
                        help="record training-free methods (NAME or NAME:KEY=VALUE,..., as in regframe register; "
                             "identity: unregistered) on the test pairs and exit")
    parser.add_argument("--atlas", choices=list(TRAINING_FREE), metavar="NAME",
                        help="record the multi-atlas segmentation baseline (the N labelled subjects of each seed "
                             "registered by NAME, majority vote) for --seeds and exit")
    parser.add_argument("--refine-adam", nargs="+", type=int, metavar="N",
                        help="record each trained JRSS seed (its final checkpoint under --run-dir) refined by N Adam "
                             "iterations on MIND-SSC (regframe register --adam N; 0: the network alone) and exit")
    parser.add_argument("--split", choices=("val", "test"), default="test",
                        help="--refine-adam: score the validation pairs (to choose N) or the test pairs")
    parser.add_argument("--table", nargs="*", type=Path, metavar="MORE",
                        help="print the table of --out and of the record files MORE (e.g. training-free rows) and exit; "
                             "a later file's record of a method and seed replaces an earlier one")
    parser.add_argument("--by-n", nargs="+", type=Path, metavar="OUT",
                        help="print one row per N labelled from these --out files and exit")
    parser.add_argument("--write-test-dataset", type=Path, metavar="FOLDER",
                        help="write a Learn2Reg folder of the test split (for register / evaluate) and exit")
    args = parser.parse_args()
    if (args.atlas or args.write_test_dataset) and tuple(args.config) != CONFIG:
        parser.error("--atlas and --write-test-dataset work on the LPBA40 config only; leave --config out")
    if args.table is not None:
        print(table(args.out, *args.table))
        return
    if args.by_n:
        print(table_by_n(args.by_n))
        return
    if args.write_test_dataset:
        print(write_test_dataset(args.write_test_dataset))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.atlas:
        for seed in args.seeds:
            record = atlas_record(args.atlas, seed, args.num_labelled)
            append_record(args.out, record)
            print(f"atlas {args.atlas} seed {seed}: seg {record['seg_dice']:.4f} ({record['labelled_ids']})", flush=True)
        return
    if args.training_free:
        for name in args.training_free:
            try:
                parse_method(name)
            except RegframeInputError as error:
                parser.error(f"--training-free: {error}")
        for name in args.training_free:
            record = training_free_record(name, args.config)
            append_record(args.out, record)
            print(f"{name}: reg {record['dice']:.4f}, {record['seconds_per_pair']:.2f} s per pair", flush=True)
        return
    if args.refine_adam:
        jobs = [(f"jrss+adam{n}", seed) for seed in args.seeds for n in args.refine_adam]
        datamodule = config_datamodule("fit", "test", config=args.config)   # read once for every job
        for method, seed in pending_jobs(jobs, args.shard, args.out, lambda r: (r["method"], r["seed"])):
            record = refined_record(seed, int(method.removeprefix("jrss+adam")), args.run_dir, datamodule,
                                    args.split, args.num_labelled)
            append_record(args.out, record)
            print(f"{method} seed {seed} ({args.split}): reg {record['dice']:.4f}, fold {record['fold_pct']:.3f} %, "
                  f"{record['seconds_per_pair']:.2f} s per pair", flush=True)
        return
    jobs = [(method, seed) for seed in args.seeds for method in args.methods]  # seed-major
    for method, seed in pending_jobs(jobs, args.shard, args.out, lambda r: (r["method"], r["seed"])):
        record = run_job(method, seed, args.run_dir, args.num_labelled, args.config)
        append_record(args.out, record)
        print(f"{method} seed {seed}: seg {record.get('seg_dice', float('nan')):.4f} "
              f"reg {record.get('dice', float('nan')):.4f} in {record['train_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
