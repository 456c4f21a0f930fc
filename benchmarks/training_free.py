"""Benchmark regframe's training-free registration against the published ConvexAdam package.

Runs every method on the same pairs in one process (methods interleaved per pair, so CPU load
from other processes affects them alike) and prints one table: Dice, HD95 (mm), SDlogJ (the
plain std of log det over non-folded voxels, and Learn2Reg's ``+3`` variant), folded voxels (%)
and wall-clock seconds per pair of the registration call alone (metrics are not timed).

Data: the ``registration_val`` pairs of ``AbdomenCTCT_synth`` at full size (2 mm) and the real
``brain_t1_pair`` (Dice over the 30 labels of ``eval_labels.json``), from ``REGFRAME_SHARED_DATA``
(default ``<repo>/../shared/data``). The published package (PyPI ``convexAdam``,
``convex_adam_pt`` with its default settings, float32 on CPU) is optional: without it its rows are
skipped with a message. ``convex_adam_pt`` takes ``(H, W, D)`` arrays and returns an
``(H, W, D, 3)`` array whose channel ``i`` is the displacement along array axis ``i`` in voxels,
a backward map (its Adam stage samples the moving features at ``x + u``): exactly regframe's
convention after moving the channel axis first.
Uses regframe's public API: run from the repository root with this checkout installed
(``pip install -e .``) or on ``PYTHONPATH=.``.

Example (full run, results appended to a JSON-lines log, table printed at the end)::

    OMP_NUM_THREADS=2 python benchmarks/training_free.py --log benchmarks/results/training_free.jsonl
    python benchmarks/training_free.py --table-only --log benchmarks/results/training_free.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_modules.paired import label_patients
from regframe.estimators.registry import TRAINING_FREE, build_training_free
from regframe.io import Volume, read_image, read_label
from regframe.learn2reg import load_dataset_json
from regframe.metrics import pair_metrics
from regframe.paired_statistics import paired_interval

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "convexAdam (package)"

Method = Callable[[Tensor, Tensor], Tensor]


def shared_data() -> Path:
    return Path(os.environ.get("REGFRAME_SHARED_DATA", REPO / ".." / "shared" / "data"))


def published_convex_adam() -> Method | None:
    """The ``convexAdam`` package's ``convex_adam_pt`` with its defaults, or None if not installed."""
    try:
        from convexAdam.convex_adam_MIND import convex_adam_pt
    except ImportError:
        return None

    def run(fixed: Tensor, moving: Tensor) -> Tensor:
        disp = convex_adam_pt(fixed[0, 0].numpy(), moving[0, 0].numpy(), dtype=torch.float32,
                              device=torch.device("cpu"))
        return torch.from_numpy(np.ascontiguousarray(disp)).float().permute(3, 0, 1, 2)[None]

    return run


def embedding_methods(checkpoint: Path) -> dict[str, Method]:
    """SAMConvex variants with the embedding trained by ``AnatomicalEmbeddingPretraining``, all taking raw
    images (the embedding sees them through its pre-training's intensity map, :class:`IntensityMapped`,
    pooled to its resolution):

    - ``samconvex_embedding``: the SAMConvex pyramid on the embedding;
    - ``samconvex_embedding+mind_adam``: then ``pyramid_mind``'s Adam stage on MIND-SSC (against
      ``pyramid_mind`` only the discrete initialisation differs);
    - ``samconvex_embedding+io``: then the paper's instance optimisation on the embedding (50 Adam
      iterations, cosine similarity, diffusion; :func:`samconvex_on_raw_images`);
    - ``samconvex_embedding>pyramid_mind``: the embedding pyramid, then ``pyramid_mind`` on the warped
      raw image (:class:`TwoStep`); its control ``pyramid_mind_fast>pyramid_mind`` has the MIND
      pyramid as the first step instead;
    - ``samconvex_coarse>pyramid_mind_fine``: the embedding pyramid's two coarse levels (32 and 16 mm
      grids), then ``pyramid_mind``'s two fine levels (8 and 4 mm) and its Adam stage on the warped raw
      image: SAMConvex's global features where the search is wide, MIND where boundaries are placed. Its
      control is ``pyramid_mind_two_pass:first_levels=2,second_levels=2`` (MIND in both steps)."""
    from regframe.estimators.pyramid import MIND_LEVELS
    from regframe.estimators.refine import Refined
    from regframe.estimators.registry import pyramid_mind
    from regframe.estimators.two_step import TwoStep
    from regframe.features.embedding import PretrainedEmbedding
    from regframe.features.mind import MINDSSC
    from regframe.methods.samconvex import samconvex_on_raw_images

    features = PretrainedEmbedding(str(checkpoint))  # one embedding, shared by every variant
    pyramid = samconvex_on_raw_images(features)
    coarse = samconvex_on_raw_images(features, levels=(4, 2), radii=(2, 3))
    io = build_training_free("pyramid_mind").io
    io.features = MINDSSC(radius=1, dilation=2)  # its own features instead of the pyramid's
    return {"samconvex_embedding": pyramid, "samconvex_embedding+mind_adam": Refined(pyramid, io),
            "samconvex_embedding+io": samconvex_on_raw_images(features, io_iterations=50),
            "samconvex_embedding>pyramid_mind": TwoStep(pyramid, build_training_free("pyramid_mind")),
            "pyramid_mind_fast>pyramid_mind": TwoStep(build_training_free("pyramid_mind_fast"),
                                                      build_training_free("pyramid_mind")),
            "samconvex_coarse>pyramid_mind_fine": TwoStep(coarse, pyramid_mind(levels=MIND_LEVELS[-2:]))}


# Pairs of training subjects (0001-0010, 0027-0030) on which settings are chosen; never registration_val.
TRAINING_PAIRS = (("0001", "0002"), ("0003", "0004"), ("0005", "0006"), ("0007", "0008"), ("0009", "0010"),
                  ("0027", "0028"), ("0029", "0030"))


def abdomen_pairs(root: Path, limit: int | None, split: str = "registration_val") -> list[dict]:
    """The ``registration_val`` pairs (reported), or with ``split="training"`` the
    :data:`TRAINING_PAIRS` (for choosing settings; dataset name ``abdomen_training``)."""
    spec = load_dataset_json(root / "AbdomenCTCT_synth" / "AbdomenCTCT_dataset.json")
    if split == "training":
        subjects = {entry.id: entry for entry in spec.training}
        chosen = [(subjects[fixed], subjects[moving]) for fixed, moving in TRAINING_PAIRS]
    else:
        chosen = [(pair.fixed, pair.moving) for pair in spec.registration_val]
    dataset = "abdomen" if split == "registration_val" else "abdomen_training"
    return [{"dataset": dataset, "id": f"{fixed.id}<-{moving.id}", "fixed": fixed.image, "moving": moving.image,
             "fixed_label": fixed.label, "moving_label": moving.label, "labels": None}
            for fixed, moving in chosen[:limit]]


def brain_pair(root: Path) -> list[dict]:
    folder = root / "brain_t1_pair"
    labels = json.loads((folder / "eval_labels.json").read_text())["labels"]
    return [{"dataset": "brain", "id": "a<-b", "fixed": folder / "subject_a_t1.nii.gz",
             "moving": folder / "subject_b_t1.nii.gz", "fixed_label": folder / "subject_a_aseg.nii.gz",
             "moving_label": folder / "subject_b_aseg.nii.gz", "labels": labels}]


def prostate_pairs(root: Path, count: int, half: str | None = None) -> list[dict]:
    """Inter-patient MR–MR pairs of ``prostate_mr_us``, scored by the Dice of the prostate gland
    (label channel 0). Several cases are the same patient's MR (near-identical images, identical
    gland labels: 80 cases, 56 distinct labels), so cases are first grouped by their gland label and
    only the first case of each group is used; consecutive ones form the pairs. ``half``: of those
    pairs, ``"tuning"`` keeps the 14 drawn by ``random.Random(0).shuffle`` (for choosing prostate
    settings; dataset ``prostate_mr_tuning``), ``"report"`` the other 14 (``prostate_mr_report``)."""
    folder = root / "prostate_mr_us"
    labels = {path.name.removesuffix(".nii.gz"): path for path in sorted((folder / "moving_labels").glob("*.nii.gz"))}
    first_of_patient: dict[str, str] = {}
    for case, patient in label_patients(labels, 0).items():
        first_of_patient.setdefault(patient, case)
    cases = sorted(first_of_patient.values())
    pairs = []
    for fixed, moving in list(zip(cases[0::2], cases[1::2]))[:count]:
        pairs.append({"dataset": f"prostate_mr_{half}" if half else "prostate_mr", "id": f"{fixed}<-{moving}",
                      "labels": [1], "label_channel": 0,
                      **{f"{role}{suffix}": folder / f"moving_{kind}" / f"{case}.nii.gz"
                         for role, case in (("fixed", fixed), ("moving", moving))
                         for suffix, kind in (("", "images"), ("_label", "labels"))}})
    if half is None:
        return pairs
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)
    chosen = order[:len(pairs) // 2] if half == "tuning" else order[len(pairs) // 2:]
    return [pairs[index] for index in sorted(chosen)]


def load_pair(pair: dict) -> tuple[Volume, Tensor, Tensor, Tensor, Tensor]:
    """The fixed volume (for its spacing), the fixed and moving images ``(1, 1, *S)`` float32 and the
    label maps ``(*S)`` int64 (``label_channel`` of the pair for multi-channel files) of one pair row."""
    fixed, moving = read_image(pair["fixed"]), read_image(pair["moving"])
    channel = pair.get("label_channel")
    fixed_label, moving_label = (torch.as_tensor(np.asarray(read_label(pair[key], channel).array)).long()
                                 for key in ("fixed_label", "moving_label"))
    f, m = (torch.as_tensor(np.asarray(image.array), dtype=torch.float32)[None, None] for image in (fixed, moving))
    return fixed, f, m, fixed_label, moving_label


def evaluate(pair: dict, methods: dict[str, Method], log: Path) -> None:
    done = logged_rows(log)
    methods = {name: method for name, method in methods.items() if (pair["dataset"], pair["id"], name) not in done}
    if not methods:
        return
    fixed, f, m, fixed_label, moving_label = load_pair(pair)
    for name, method in methods.items():
        start = time.perf_counter()
        disp = method(f, m)  # no outer no_grad: the Adam stages need autograd
        seconds = time.perf_counter() - start
        result = pair_metrics(fixed_label, moving_label, disp.float(), spacing=list(fixed.spacing),
                              labels=pair["labels"], hd95=True)
        row = {"dataset": pair["dataset"], "pair": pair["id"], "method": name, "dice": result["dice"],
               "hd95": result["hd95"], "sdlogj": result["sdlogj"], "sdlogj_l2r": result["sdlogj_l2r"],
               "fold_pct": result["fold_pct"], "seconds": seconds}
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def logged_rows(log: Path) -> set[tuple[str, str, str]]:
    """(dataset, pair, method) already in the log: a restarted run continues where it stopped."""
    if not log.is_file():
        return set()
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {(row["dataset"], row["pair"], row["method"]) for row in rows}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def table(log: Path, reference: str = PACKAGE) -> str:
    """Mean per (dataset, method) over the logged pairs, median seconds per pair and its ratio to
    ``reference``; then every method's Dice minus the reference's on the same pairs (95 % t interval)."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["method"])].append(row)
    keys = ("dice", "hd95", "sdlogj", "sdlogj_l2r", "fold_pct")
    lines = ["| dataset | method | pairs | Dice | HD95 mm | SDlogJ | SDlogJ (L2R) | fold % | median s / pair | time / package |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, method), group in sorted(groups.items()):
        mean = {k: _nanmean([r[k] for r in group]) for k in keys}
        seconds = statistics.median(r["seconds"] for r in group)
        package = groups.get((dataset, reference))
        ratio = f"{seconds / statistics.median(r['seconds'] for r in package):.3f}" if package else ""
        lines.append(f"| {dataset} | {method} | {len(group)} | {mean['dice']:.4f} | {mean['hd95']:.2f} | "
                     f"{mean['sdlogj']:.3f} | {mean['sdlogj_l2r']:.3f} | {mean['fold_pct']:.4f} | {seconds:.1f} | {ratio} |")
    lines += ["", f"| dataset | method | pairs | Dice − {reference} | 95 % CI |", "|---|---|---|---|---|"]
    for (dataset, method), group in sorted(groups.items()):
        package = {r["pair"]: r["dice"] for r in groups.get((dataset, reference), [])}
        differences = [r["dice"] - package[r["pair"]] for r in group if r["pair"] in package]
        if method == reference or not differences:
            continue
        mean, low, high = paired_interval(differences)
        lines.append(f"| {dataset} | {method} | {len(differences)} | {mean:+.4f} | [{low:+.4f}, {high:+.4f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=REPO / "benchmarks" / "results" / "training_free.jsonl")
    parser.add_argument("--methods", nargs="+", default=["pyramid_mind", "pyramid_mind_fast"],
                        help=f"regframe methods from the registry ({', '.join(sorted(TRAINING_FREE))}), "
                             "with options as NAME:KEY=VALUE,...")
    parser.add_argument("--pairs", type=int, default=None, help="first N abdomen pairs (default all 15)")
    parser.add_argument("--split", choices=("registration_val", "training"), default="registration_val",
                        help="abdomen pairs: the 15 reported ones, or 7 pairs of training subjects for tuning")
    parser.add_argument("--skip-package", action="store_true", help="leave out the published convexAdam package")
    parser.add_argument("--no-brain", action="store_true", help="leave out the brain pair")
    parser.add_argument("--no-abdomen", action="store_true", help="leave out the abdomen pairs")
    parser.add_argument("--prostate", type=int, default=0,
                        help="also the first N inter-patient prostate MR-MR pairs (gland Dice)")
    parser.add_argument("--prostate-half", choices=("tuning", "report"), default=None,
                        help="of those prostate pairs, only the seeded tuning half or the other (report) half")
    parser.add_argument("--embedding-checkpoint", type=Path, default=None,
                        help="AnatomicalEmbeddingPretraining checkpoint: adds the SAMConvex variants of "
                             "embedding_methods (abdomen only)")
    parser.add_argument("--embedding-methods", nargs="+", default=None,
                        help="with --embedding-checkpoint: only these of embedding_methods (default all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table-only", action="store_true", help="print the table of an existing log")
    args = parser.parse_args()
    if args.table_only:
        print(table(args.log))
        return
    torch.set_num_threads(args.threads)
    root = shared_data()
    if not (root / "AbdomenCTCT_synth").is_dir():
        raise SystemExit(f"shared data not found at {root}; set REGFRAME_SHARED_DATA")
    methods: dict[str, Method] = {}
    if not args.skip_package:
        package = published_convex_adam()
        if package is None:
            print("convexAdam package not installed (pip install convexAdam --no-deps): its rows are skipped")
        else:
            methods[PACKAGE] = package
    for name in args.methods:
        methods[name] = build_training_free(name)
    abdomen_methods = dict(methods)
    if args.embedding_checkpoint is not None:
        variants = embedding_methods(args.embedding_checkpoint)
        unknown = set(args.embedding_methods or ()) - set(variants)
        if unknown:
            parser.error(f"--embedding-methods: unknown {sorted(unknown)}; choose from {sorted(variants)}")
        abdomen_methods.update({name: method for name, method in variants.items()
                                if args.embedding_methods is None or name in args.embedding_methods})
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_brain:
        for pair in brain_pair(root):
            evaluate(pair, methods, args.log)
    for pair in [] if args.no_abdomen else abdomen_pairs(root, args.pairs, args.split):
        evaluate(pair, abdomen_methods, args.log)
    for pair in prostate_pairs(root, args.prostate, args.prostate_half):
        evaluate(pair, methods, args.log)
    print(table(args.log))


if __name__ == "__main__":
    main()
