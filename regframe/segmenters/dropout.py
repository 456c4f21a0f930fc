"""Dropout as a noisy-student switch, and BatchNorm statistics re-estimated without dropout."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn


def set_dropout(module: nn.Module, p: float) -> None:
    """Set the rate of every ``nn.Dropout*`` layer in ``module`` (the noisy-student switch)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.dropout._DropoutNd):
            layer.p = p


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, images: list[Tensor], batch_size: int = 2) -> None:
    """Re-estimate every BatchNorm layer's running statistics of ``network`` as the plain average of
    batch statistics over ``images`` (each ``(1, *S)``; a last batch of one joins the one before), with
    dropout off (:func:`torch.optim.swa_utils.update_bn`, which restores momenta and the train/eval
    mode; the dropout rates are restored here). Statistics taken while training with dropout describe
    a different (noisier) network than the one used in eval mode (variance shift); this makes them match."""
    if not images:
        return
    dropouts = {m: m.p for m in network.modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    set_dropout(network, 0.0)
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] == 1:
        starts.pop()                                           # no batch of one (BatchNorm needs two values)
    batches = (torch.stack(images[start:end]).float() for start, end in zip(starts, starts[1:] + [len(images)]))
    update_bn(batches, network, device=next(network.parameters()).device)
    for layer, rate in dropouts.items():
        layer.p = rate
