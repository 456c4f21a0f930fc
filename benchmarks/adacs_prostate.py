"""AdaCS and its baselines on held-out prostate ultrasound pairs (CPU-sized).

Trains the same VoxelMorph-style estimator (small MONAI BasicUNet, 7 scaling-and-squaring steps)
with each objective of ``AdaptiveCorrespondenceScoring`` (vanilla, nll, beta_nll, adareg,
adaframe, adacs) for a fixed number of steps on downsampled US volumes, then evaluates gland Dice,
HD95 (mm) and SDlogJ on held-out pairs at full resolution (the field is upsampled with
``resize_field``). One JSON line per (mode, seed) goes to ``--out``; ``--table`` prints the table
(mean ± std over seeds of the per-seed means over the evaluated pairs).

Split by case (fixed seed): 20 test cases (10 pairs), 10 validation cases (5 pairs, taken out of
training, used to choose settings with ``--evaluate val``), 50 training cases.

Pair protocols (``--pairs``): ``inter`` (default) pairs two patients' volumes (training: random
inter-patient pairs); ``synthetic`` registers each held-out case to itself under a known random
smooth deformation with independent speckle-like noise and, in half of the pairs, an
acoustic-shadow-like slab in the moving image (``synthetic_pair``; 20 test / 10 validation pairs
with a fixed per-case seed; training: a fresh deformation of a random training case per step).

Preprocessing: per-volume histogram equalisation (``--norm rank``, intensities stay in [0, 1]),
chosen on the validation pairs with the instance-optimisation diagnostic (``--instance-opt``).
CPU-scale choices (documented deviations from the paper): training volumes resampled by 0.5
(47×63×44 → 24×32×22), ``--epochs`` epochs of ``--steps-per-epoch`` random training pairs,
N_w = ``--warmup-epochs`` (paper: 10 for 3D), learning rate ``--lr`` for both optimisers (paper 1e-4).

With regframe installed (``make install``):

    OMP_NUM_THREADS=1 python benchmarks/adacs_prostate.py --seeds 0 1 --out runs/adacs.jsonl
    OMP_NUM_THREADS=1 python benchmarks/adacs_prostate.py --pairs synthetic --out runs/adacs_synth.jsonl
    python benchmarks/adacs_prostate.py --table runs/adacs.jsonl
    OMP_NUM_THREADS=1 python benchmarks/adacs_prostate.py --evaluate val --instance-opt 0.3 1 3 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import warnings
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data_modules.paired import label_patients
from regframe.estimators.unet_regressor import UNetRegressor, default_unet
from regframe.io import read_image, read_label
from regframe.losses import diffusion
from regframe.methods.adaptive_scoring import AdaptiveCorrespondenceScoring
from regframe.metrics import pair_metrics
from regframe.objectives.adacs import AdaCS
from regframe.objectives.adaframe import AdaFrame
from regframe.objectives.adareg import AdaReg
from regframe.objectives.nll import NLL, BetaNLL
from regframe.objectives.residual import ResidualObjective
from regframe.objectives.vanilla import Vanilla
from regframe.spatial import resize_field, resize_image, warp, warp_labels

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REGFRAME_SHARED_DATA", ROOT / ".." / "shared" / "data")) / "prostate_mr_us"
FEATURES = (8, 16, 16, 16, 16, 8)


#: The compared objectives (``--modes``), in table order.
MODES = ("vanilla", "nll", "beta_nll", "adareg", "adaframe", "adacs")
BASELINES: dict[str, type[ResidualObjective]] = {"vanilla": Vanilla, "nll": NLL, "beta_nll": BetaNLL,
                                                  "adareg": AdaReg, "adaframe": AdaFrame}


def objective(mode: str, args: argparse.Namespace) -> ResidualObjective:
    """The objective called ``mode`` with the run's λ (and α, β, N_w for AdaCS), its nets in 3D."""
    if mode == "adacs":
        return AdaCS(spatial_dims=3, smooth_weight=args.lam, score_reg_weight=args.alpha, score_tv_weight=args.beta,
                     warmup_epochs=args.warmup_epochs)
    return BASELINES[mode](smooth_weight=args.lam)


def normalise(volume: Tensor, kind: str) -> Tensor:
    """Intensity preprocessing of a uint8-valued volume ``(1, 1, *S)`` to [0, 1]: ``scale`` divides
    by 255; ``rank`` is per-volume histogram equalisation (each voxel's intensity rank / (N − 1),
    ties broken by position), which removes the large between-patient gain differences of TRUS."""
    if kind == "scale":
        return volume / 255.0
    if kind != "rank":
        raise ValueError(f"unknown intensity normalisation {kind!r}")
    flat = volume.flatten()
    ranks = torch.empty_like(flat)
    ranks[flat.argsort(stable=True)] = torch.linspace(0.0, 1.0, flat.numel())
    return ranks.view_as(volume)


def reduced_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """The training grid: ``shape`` scaled by ``factor``, at least 8 voxels per axis."""
    return tuple(max(8, round(n * factor)) for n in shape)


def load_cases(factor: float, norm: str = "scale") -> list[dict]:
    """All US volumes (``normalise(·, norm)``) with the gland label, at full and at reduced resolution,
    and each case's patient key (:func:`data_modules.paired.label_patients` of its MR gland label)."""
    cases = []
    for path in sorted((DATA / "fixed_images").glob("*.nii.gz")):
        image = read_image(path)
        label = read_label(DATA / "fixed_labels" / path.name, channel=0)
        full = normalise(torch.as_tensor(image.array, dtype=torch.float32)[None, None], norm)
        small = reduced_shape(full.shape[2:], factor)
        cases.append({"id": path.name.split(".")[0], "full": full, "small": resize_image(full, small),
                      "label": torch.as_tensor(label.array)[None, None], "spacing": image.spacing})
    patients = label_patients({case["id"]: DATA / "moving_labels" / f"{case['id']}.nii.gz" for case in cases}, 0)
    for case in cases:  # one patient: the same MR gland label (near-identical MR and TRUS)
        case["patient"] = patients[case["id"]]
    return cases


def split(cases: list[dict], test_cases: int, val_cases: int = 0,
          seed: int = 0) -> tuple[list[dict], list[tuple[dict, dict]], list[tuple[dict, dict]]]:
    """Held-out split by patient (fixed seed, the same for every run): training cases, validation pairs
    and test pairs (consecutive disjoint pairs of the held-out cases, interleaved so that the two cases of a pair
    are different patients where the part allows). A case's ``"patient"`` key (the
    case itself when absent) keeps one patient's cases in one part; whole patients fill the test part
    until it has ``test_cases`` cases, then validation until ``val_cases`` (either can exceed its
    count by the other cases of its last patient). The test cases are the same for every
    ``val_cases``; validation cases come out of the training cases."""
    groups: dict[object, list[dict]] = {}
    for case in cases:
        groups.setdefault(case.get("patient", case["id"]), []).append(case)
    order = sorted(groups, key=str)
    random.Random(seed).shuffle(order)
    parts: dict[str, list[list[dict]]] = {"test": [], "val": [], "train": []}
    for key in order:
        count = {name: sum(len(g) for g in chosen) for name, chosen in parts.items()}
        name = "test" if count["test"] < test_cases else "val" if count["val"] < val_cases else "train"
        parts[name].append(groups[key])

    def interleaved(chosen: list[list[dict]]) -> list[dict]:
        """First cases of every patient, then second cases, ...: consecutive cases differ in patient."""
        return [group[i] for i in range(max(map(len, chosen), default=0)) for group in chosen if i < len(group)]

    test, val, train = (interleaved(parts[name]) for name in ("test", "val", "train"))

    def pairs(group: list[dict]) -> list[tuple[dict, dict]]:
        return [(group[i], group[i + 1]) for i in range(0, len(group) - 1, 2)]

    return train, pairs(val), pairs(test)


def gaussian_smooth(volume: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``(B, C, *S)`` (3-D), ``sigma`` in voxels, replicate border."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = volume.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        volume = F.conv3d(F.pad(volume, pad, mode="replicate"), kernel.view(shape).repeat(channels, 1, 1, 1, 1),
                          groups=channels)
    return volume


def random_field(shape: tuple[int, ...], generator: torch.Generator, control: int = 3, local: float = 0.7,
                 mean_disp: float = 4.0, max_disp: float = 8.0) -> Tensor:
    """Random smooth displacement ``(1, 3, *shape)`` in voxels: on a ``control``³ grid, one Gaussian
    translation vector shared by all points plus i.i.d. Gaussian vectors of relative std ``local``,
    trilinearly upsampled (``resize_image``, same field of view), then scaled by one factor so the
    mean vector length is ``mean_disp`` unless that makes the longest exceed ``max_disp`` (then the
    longest is ``max_disp`` and the mean is smaller)."""
    coarse = torch.randn(1, 3, 1, 1, 1, generator=generator) + local * torch.randn(
        1, 3, control, control, control, generator=generator)
    field = resize_image(coarse, shape)
    length = field.norm(dim=1)
    return field * min(mean_disp / length.mean().item(), max_disp / length.max().item())


def speckle(volume: Tensor, generator: torch.Generator, strength: float, sigma: float = 1.0) -> Tensor:
    """Multiplicative speckle-like noise: ``volume · (1 + strength · n)`` with ``n`` white Gaussian
    noise smoothed by a Gaussian of ``sigma`` voxels and rescaled to unit std; clipped to [0, 1]."""
    noise = gaussian_smooth(torch.randn(volume.shape, generator=generator), sigma)
    return (volume * (1 + strength * noise / noise.std())).clamp(0.0, 1.0)


def shadow_mask(shape: tuple[int, ...], generator: torch.Generator, width: tuple[float, float] = (5.0, 10.0)) -> Tensor:
    """Acoustic-shadow-like slab ``(1, 1, *shape)`` (bool): voxels within a random-width band
    (``width`` voxels) of a plane with random orientation through a random voxel of the middle half."""
    normal = torch.randn(3, generator=generator)
    normal = normal / normal.norm()
    centre = torch.tensor([n * (0.25 + 0.5 * torch.rand(1, generator=generator).item()) for n in shape])
    half = 0.5 * (width[0] + (width[1] - width[0]) * torch.rand(1, generator=generator).item())
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    distance = (normal.view(3, 1, 1, 1) * (grid - centre.view(3, 1, 1, 1))).sum(0)
    return (distance.abs() <= half)[None, None]


def synthetic_pair(case: dict, factor: float, seed: int, noise: float = 0.2, shadow_prob: float = 0.5,
                   shadow_gain: float = 0.1, mean_disp: float = 4.0) -> tuple[dict, dict]:
    """A (fixed, moving) pair from one real volume with a known deformation (``--pairs synthetic``).

    fixed = ``speckle(case image)``; moving = ``speckle(warp(case image, field))`` and moving label
    = ``warp_labels(case label, field)`` (nearest), i.e. ``moving(x) = image(x + field(x))`` with
    ``field = random_field(…)`` at full resolution (mean length ``mean_disp`` voxels, longest at most 8).
    The speckle is drawn independently for fixed and moving (``noise`` = relative std); with
    probability ``shadow_prob`` the moving image also gets an acoustic-shadow-like slab
    (``shadow_mask``) whose intensities are multiplied by ``shadow_gain``, a region without a valid
    correspondence. Everything is drawn from ``torch.Generator().manual_seed(seed)``. The moving
    dict also holds ``field`` and ``shadow`` (the mask, all False without a shadow)."""
    generator = torch.Generator().manual_seed(seed)
    image, label = case["full"], case["label"]
    shape = tuple(image.shape[2:])
    field = random_field(shape, generator, mean_disp=mean_disp)
    fixed = speckle(image, generator, noise)
    moving = speckle(warp(image, field), generator, noise)
    shadow = shadow_mask(shape, generator)
    if torch.rand(1, generator=generator).item() >= shadow_prob:
        shadow = torch.zeros_like(shadow)
    moving = torch.where(shadow, moving * shadow_gain, moving)
    small = reduced_shape(shape, factor)
    return ({"id": case["id"], "full": fixed, "small": resize_image(fixed, small), "label": label,
             "spacing": case["spacing"]},
            {"id": case["id"], "full": moving, "small": resize_image(moving, small),
             "label": warp_labels(label, field), "spacing": case["spacing"], "field": field, "shadow": shadow})


def case_seed(case: dict) -> int:
    """Fixed per-case seed of the synthetic validation/test deformation (from the case id)."""
    return zlib.crc32(str(case["id"]).encode())


class SyntheticPairs(torch.utils.data.Dataset):
    """``length`` synthetic pairs (``synthetic_pair``) of random training cases per epoch, with a
    fresh deformation, noise and shadow per draw."""

    def __init__(self, cases: list[dict], length: int, seed: int, factor: float) -> None:
        self.cases, self.length, self.factor, self.rng = cases, length, factor, random.Random(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        case = self.rng.randrange(len(self.cases))
        fixed, moving = synthetic_pair(self.cases[case], self.factor, self.rng.getrandbits(62))
        return {"fixed": fixed["small"][0], "moving": moving["small"][0], "pair_index": torch.tensor(case)}


class RandomPairs(torch.utils.data.Dataset):
    """``length`` random inter-patient (fixed, moving) pairs of training cases per epoch."""

    def __init__(self, cases: list[dict], length: int, seed: int) -> None:
        self.cases, self.length, self.rng = cases, length, random.Random(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        fixed, moving = self.rng.sample(range(len(self.cases)), 2)
        return {"fixed": self.cases[fixed]["small"][0], "moving": self.cases[moving]["small"][0],
                "pair_index": torch.tensor(fixed * len(self.cases) + moving)}


def instance_optimisation(pairs: list[tuple[dict, dict]], factor: float, lam: float, iterations: int = 300,
                          lr: float = 0.05) -> list[float]:
    """Diagnostic upper bound of the loss, no network: per pair, Adam on a displacement field at
    ``factor`` × the full grid minimising ``mean(r²) + lam ‖∇u‖²`` (the vanilla objective); returns
    the gland Dice per pair with the field upsampled to the full grid."""
    dices = []
    for fixed, moving in pairs:
        full = fixed["full"].shape[2:]
        size = reduced_shape(full, factor)
        target, source = resize_image(fixed["full"], size), resize_image(moving["full"], size)
        disp = torch.zeros(1, 3, *size, requires_grad=True)
        optimiser = torch.optim.Adam([disp], lr=lr)
        for _ in range(iterations):
            loss = (target - warp(source, disp)).pow(2).mean() + lam * diffusion(disp)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        field = resize_field(disp.detach(), full)
        dices.append(pair_metrics(fixed["label"], moving["label"], field, fixed["spacing"], hd95=False)["dice"])
    return dices


def run(mode: str, seed: int, args: argparse.Namespace, train: list[dict], test_pairs: list) -> dict:
    import lightning.pytorch as pl

    pl.seed_everything(seed, verbose=False)
    estimator = UNetRegressor(3, backbone=default_unet(3, features=FEATURES), backbone_channels=FEATURES[-1],
                              integration_steps=7, size_divisible=1)
    lr = args.lr
    module = AdaptiveCorrespondenceScoring(estimator, objective(mode, args),
                                           optimizer=lambda params: torch.optim.Adam(params, lr=lr))
    pairs = (SyntheticPairs(train, args.steps_per_epoch, seed, args.factor) if args.pairs == "synthetic"
             else RandomPairs(train, args.steps_per_epoch, seed))
    loader = torch.utils.data.DataLoader(pairs, batch_size=1)
    trainer = pl.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         accelerator="cpu", devices=1)
    start = time.time()
    trainer.fit(module, train_dataloaders=loader)
    train_s = time.time() - start
    module.eval()
    per_pair = []
    with torch.no_grad():
        for fixed, moving in test_pairs:
            disp = module.estimator(fixed["small"], moving["small"])
            disp = resize_field(disp, fixed["full"].shape[2:])
            per_pair.append(pair_metrics(fixed["label"], moving["label"], disp, fixed["spacing"]))
    before = [pair_metrics(f["label"], m["label"], torch.zeros(1, 3, *f["full"].shape[2:]), f["spacing"])
              for f, m in test_pairs]
    mean = lambda rows, key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    return {"mode": mode, "seed": seed, "dice": mean(per_pair, "dice"), "hd95": mean(per_pair, "hd95"),
            "sdlogj": mean(per_pair, "sdlogj"), "fold_pct": mean(per_pair, "fold_pct"),
            "dice_before": mean(before, "dice"), "hd95_before": mean(before, "hd95"),
            "train_s": round(train_s, 1), "pairs": len(per_pair), "split": args.evaluate,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if k not in ("modes", "seeds", "out", "table")}}


def table(path: Path) -> str:
    """Markdown table: mean ± std over seeds, per mode."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| method | seeds | Dice | HD95 (mm) | SDlogJ | folds % | train s/run |", "|---|---|---|---|---|---|---|"]
    if rows:
        out.insert(0, f"before registration: Dice {rows[0]['dice_before']:.3f}, HD95 {rows[0]['hd95_before']:.2f} mm "
                      f"({rows[0]['pairs']} held-out {rows[0].get('split', 'test')} pairs, "
                      f"{rows[0]['config'].get('pairs', 'inter')})\n")
    for mode in MODES:
        runs = [r for r in rows if r["mode"] == mode]
        if not runs:
            continue

        def cell(key: str, digits: int) -> str:
            values = [r[key] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"

        seeds = ",".join(str(r["seed"]) for r in runs)
        out.append(f"| {mode} | {seeds} | {cell('dice', 3)} | {cell('hd95', 2)} | {cell('sdlogj', 3)} | "
                   f"{cell('fold_pct', 3)} | {statistics.fmean(r['train_s'] for r in runs):.0f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="objectives to train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--alpha", type=float, default=0.02, help="AdaCS score regulariser weight")
    parser.add_argument("--beta", type=float, default=0.1, help="AdaCS score TV weight")
    parser.add_argument("--factor", type=float, default=0.5, help="resampling factor of the training volumes")
    parser.add_argument("--lam", type=float, default=0.01, help="λ on the diffusion regulariser")
    parser.add_argument("--norm", choices=("scale", "rank"), default="rank", help="intensity normalisation")
    parser.add_argument("--pairs", choices=("inter", "synthetic"), default="inter",
                        help="inter-patient pairs, or each case against itself under a known synthetic "
                             "deformation with speckle and shadows (synthetic_pair)")
    parser.add_argument("--test-cases", type=int, default=20)
    parser.add_argument("--val-cases", type=int, default=10, help="taken out of the training cases")
    parser.add_argument("--evaluate", choices=("test", "val"), default="test",
                        help="evaluate on the test pairs, or on the validation pairs (to choose settings)")
    parser.add_argument("--instance-opt", nargs="+", type=float, metavar="LAMBDA",
                        help="only run the instance-optimisation diagnostic for these λ on the --evaluate pairs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "adacs_prostate.jsonl")
    parser.add_argument("--table", type=Path, help="only print the table of this results file")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not DATA.is_dir():
        sys.exit(f"prostate data not found at {DATA} (set REGFRAME_SHARED_DATA)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cases = load_cases(args.factor, args.norm)
    train, val_pairs, test_pairs = split(cases, args.test_cases, args.val_cases)
    pairs = test_pairs if args.evaluate == "test" else val_pairs
    if args.pairs == "synthetic":
        held_out = [case for pair in pairs for case in pair]
        pairs = [synthetic_pair(case, args.factor, case_seed(case)) for case in held_out]
    if args.instance_opt:
        before = [pair_metrics(f["label"], m["label"], torch.zeros(1, 3, *f["full"].shape[2:]), hd95=False)["dice"]
                  for f, m in pairs]
        print(json.dumps({"split": args.evaluate, "pairs": args.pairs, "norm": args.norm, "dice_before": round(statistics.fmean(before), 4)}))
        for lam in args.instance_opt:
            dices = instance_optimisation(pairs, args.factor, lam)
            print(json.dumps({"lam": lam, "factor": args.factor, "dice": round(statistics.fmean(dices), 4),
                              "per_pair": [round(d, 3) for d in dices]}), flush=True)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for mode in args.modes:
            result = run(mode, seed, args, train, pairs)
            with args.out.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(json.dumps({k: v for k, v in result.items() if k != "config"}), flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
