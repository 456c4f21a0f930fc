"""Embedding quality before registration: cross-subject organ label retrieval on abdomen training pairs.

For each of the 7 pairs of AbdomenCTCT_synth training subjects on which settings are chosen
(``training_free.TRAINING_PAIRS``, never ``registration_val``), every feature extractor maps both
scans to its grid; ``--points`` voxels of subject A drawn uniformly (the same ones for every extractor) take the label of the most similar
voxel of subject B (cosine, :func:`regframe.embedding_retrieval.retrieval_dice`), and the Dice over
the organs present in both is averaged. Extractors: MIND-SSC (r 1, d 2, pooled to the embedding's
grid), the untrained embedding network (seed 0) and each ``--checkpoint`` of
``AnatomicalEmbeddingPretraining``. Images go through the first checkpoint's preprocessing
(intensity map, resampling); labels are taken to the feature grid by nearest neighbour.

Example::

    OMP_NUM_THREADS=1 python benchmarks/sam_embedding_retrieval.py --checkpoint runs/abdomen_sam_embedding/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from training_free import abdomen_pairs, load_pair, shared_data

from regframe.embedding_retrieval import retrieval_dice
from regframe.features.embedding import AnatomicalEmbedding, load_embedding
from regframe.features.mind import MINDSSC
from regframe.optim.smoothing import pool
from regframe.preprocess import Preprocessing


class PooledMIND(nn.Module):
    """MIND-SSC of the image, average-pooled by 2 (the embedding's local grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.mind = MINDSSC(radius=1, dilation=2)

    def forward(self, image: Tensor) -> Tensor:
        return pool(self.mind(image), 2)


def extractors(checkpoints: list[Path]) -> tuple[dict[str, nn.Module], Preprocessing]:
    """Feature extractors by name, and the preprocessing of the first checkpoint (or the default
    abdomen one of ``experiments/abdomen_sam_embedding.yaml`` without a checkpoint)."""
    torch.manual_seed(0)
    found: dict[str, nn.Module] = {"MIND-SSC (pooled x2)": PooledMIND(), "untrained embedding": AnatomicalEmbedding().eval()}
    prep = Preprocessing(clamp=(-200.0, 300.0), scale=0.002, resample_factor=0.5)
    for index, path in enumerate(checkpoints):
        embedding, recorded = load_embedding(path)
        found[f"embedding {path}"] = embedding
        if index == 0:
            prep = recorded
    return found, prep


@torch.no_grad()
def run(checkpoints: list[Path], points: int, out: Path) -> None:
    found, prep = extractors(checkpoints)
    for pair_index, entry in enumerate(abdomen_pairs(shared_data(), None, "training")):
        _, fixed, moving, fixed_label, moving_label = load_pair(entry)
        images = [prep.image(image[0, 0]) for image in (fixed, moving)]       # (1, 1, *S') each
        for name, extractor in found.items():
            features = [extractor(image)[0] for image in images]
            labels = [F.interpolate(label[None, None].float(), size=feature.shape[1:], mode="nearest-exact")[0, 0].long()
                      for label, feature in zip((fixed_label, moving_label), features)]
            # the same voxels for every extractor on one grid: a generator seeded by the pair
            chosen = torch.randperm(labels[0].numel(), generator=torch.Generator().manual_seed(pair_index))[:points]
            scores = retrieval_dice(features[0].flatten(1)[:, chosen], features[1], labels[0].flatten()[chosen], labels[1])
            row = {"pair": entry["id"], "features": name, "grid": list(features[0].shape[1:]),
                   "dice": statistics.fmean(scores.values()), "per_label": scores}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("pair", "features", "dice")}), flush=True)


def table(out: Path) -> str:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    names = list(dict.fromkeys(r["features"] for r in rows))
    lines = ["| features | pairs | retrieval Dice (13 organs) |", "|---|---|---|"]
    for name in names:
        values = [r["dice"] for r in rows if r["features"] == name]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        lines.append(f"| {name} | {len(values)} | {statistics.fmean(values):.4f}{spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, nargs="*", default=[])
    parser.add_argument("--points", type=int, default=8000, help="voxels of subject A retrieved per pair")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sam_embedding_retrieval.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = parser.parse_args()
    if not args.table:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        run(args.checkpoint, args.points, args.out)
    print(table(args.out))


if __name__ == "__main__":
    main()
