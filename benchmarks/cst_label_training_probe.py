"""Can CST's network fit its pseudo labels when trained differently? (issue 12, diagnosis probe)

Trains a fresh network ``g`` (the run's config, PyTorch's default initialisation as CST's trained
network, seed 0) for ``--iterations`` steps of CST's loss (paper augmentation, batch 2, Adam 1e-3 cosine
to 1e-5) on fixed pseudo labels (a ``stage_NN.npy`` of a run), with ``h``'s soft arg-min at
``--temperature`` during training only, ``--passes`` passes of ``h∘g`` in the loss
(``CyclicalSelfTraining.training_passes``) and any ``--set`` config overrides (no augmentation, a wider
``g``). Then reports the end-point error on the training pairs without augmentation, for one and two
passes, at the training temperature and at the paper's 20, next to the zero field. ``--save`` writes
the model as a stage-1 checkpoint for ``cst_test_time_ablation.py``.

    python benchmarks/cst_label_training_probe.py --config experiments/abdomen_cst.yaml --config experiments/abdomen_cst_2d.yaml \
        --labels runs/cst2d/seed0/version_0/pseudo_labels/stage_07.npy --temperature 1 --iterations 500
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from cst_label_fit import training_pair

from regframe.cli import RegframeCLI
from regframe.estimators.protocols import field_at, trained_network
from regframe.estimators.two_step import TwoStep
from regframe.losses import end_point_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--passes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--eval-pairs", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the probe, e.g. model.init_args.augment=false")
    parser.add_argument("--save", help="write {'state_dict', 'epoch': 0} here (a stage-1 checkpoint)")
    args = parser.parse_args()
    cli = RegframeCLI(args=[f"--config={c}" for c in args.config] + ["--trainer.logger=false", "--seed_everything=0",
                                                                      f"--model.init_args.training_passes={args.passes}"]
                      + [f"--{override}" for override in args.set],
                      run=False)
    model, data = cli.model, cli.datamodule
    data.setup("fit")
    labels = np.load(args.labels, mmap_mode="r")
    network = trained_network(model.estimator)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iterations, eta_min=1e-5)

    network.temperature = args.temperature
    model.train()
    for step in range(args.iterations):
        indices = torch.randint(len(data.train_pairs), (2,), generator=generator)
        batch = [training_pair(data, labels, int(i)) for i in indices]
        fixed, moving, target, spacing = (torch.cat(parts) for parts in zip(*batch))
        loss = model.pseudo_label_loss(fixed, moving, target, spacing)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == args.iterations - 1:
            print(f"step {step}: training loss {loss.item():.2f} mm", flush=True)
    model.eval()
    temperatures = sorted({args.temperature, 20.0})
    errors: dict[str, list[float]] = {"zero field": []}
    for index in range(min(args.eval_pairs, len(data.train_pairs))):
        fixed, moving, target, spacing = training_pair(data, labels, index)
        mm = (spacing[0] / model.label_resample_factor).tolist()
        fields = {"zero field": torch.zeros_like(target)}
        with torch.no_grad():
            for temperature in temperatures:
                network.temperature = temperature
                for passes, estimator in ((1, network), (2, TwoStep(network))):
                    fields[f"h∘g, {passes} pass(es), temperature {temperature:g}"] = field_at(
                        estimator, fixed, moving, target.shape[2:]).float()
        for name, field in fields.items():
            errors.setdefault(name, []).append(float(end_point_error(field, target, mm, model.loss_crop)))
    network.temperature = 20.0
    print(f"| field | EPE mm ({len(errors['zero field'])} training pairs, no augmentation, after {args.iterations} "
          f"iterations of {args.passes} pass(es) at temperature {args.temperature:g}) |\n|---|---|")
    for name, values in errors.items():
        print(f"| {name} | {statistics.fmean(values):.2f} |")
    if args.save:
        torch.save({"state_dict": model.state_dict(), "epoch": 0}, args.save)


if __name__ == "__main__":
    main()
