"""Instance optimisation (IO) of a displacement field with Adam on feature maps (ConvexAdam, CST)."""

from __future__ import annotations

import torch
from torch import Tensor

from regframe.optim.smoothing import box_filter
from regframe.spatial import identity_grid, resize_field, sample_points, warp

DATA_TERMS = ("ssd", "neg_cos")


def _data_cost(fixed_feat: Tensor, warped: Tensor, data_term: str) -> Tensor:
    if data_term == "ssd":
        return (fixed_feat - warped).pow(2).mean()
    return -torch.nn.functional.cosine_similarity(fixed_feat, warped, dim=1).mean()


def _masked_data_cost(fixed_points: Tensor, moving_feat: Tensor, field: Tensor, voxels: Tensor, positions: Tensor,
                      total: int, data_term: str) -> Tensor:
    """The data term over the listed ``voxels`` only (flat indices, at voxel ``positions (1, P, D)``),
    normalised by all ``total`` voxels of the grid: equal to :func:`_data_cost` when the other voxels
    contribute a constant (e.g. uniform background in both images)."""
    points = positions + field.flatten(2)[:, :, voxels].transpose(1, 2)
    warped = sample_points(moving_feat, points)  # (B, C, P)
    if data_term == "ssd":
        return (fixed_points - warped).pow(2).sum() / (warped.shape[0] * warped.shape[1] * total)
    return -torch.nn.functional.cosine_similarity(fixed_points, warped, dim=1).sum() / (warped.shape[0] * total)


def adam_instance_optimisation(disp_init: Tensor, fixed_feat: Tensor, moving_feat: Tensor, iterations: int = 50, lr: float = 1.0, data_weight: float = 12.0,
                               smooth_weight: float = 0.65, data_term: str = "ssd", smooth_pools: int = 3,
                               adam_eps: float = 1e-8, return_grid: bool = False,
                               data_mask: Tensor | None = None) -> Tensor:
    """Fine-tune a field with Adam against fixed and moving features; not differentiable.

    ``disp_init (B, D, *S)`` in voxels of its own grid ``S`` (normally the image grid).
    ``fixed_feat`` and ``moving_feat`` ``(B, C, *G)`` are on the optimisation grid ``G`` (coarser
    than or equal to ``S``). The parameter is the field on ``G`` in voxels of ``G``, initialised from
    ``disp_init``. Each iteration it is box-filtered ``smooth_pools`` times, the moving features are
    sampled at ``x + u`` and the loss is
    ``data_weight * data(fixed, warped) + smooth_weight * sum_axes mean(forward difference^2)``, with
    data ``"ssd"`` (mean squared difference over channels and voxels) or ``"neg_cos"`` (negative
    mean cosine similarity). ``data_mask`` (bool ``(*G)``): evaluate the data term at these voxels
    only (still divided by the number of all voxels), e.g. the dilated foreground; the smoothness
    term covers the whole grid. Returns the smoothed field resized to ``S`` (or on ``G`` with
    ``return_grid=True``), detached. Runs with gradients enabled and inference mode off (inputs are cloned), so it
    works inside ``no_grad`` and ``torch.inference_mode`` contexts (e.g. Lightning validation).
    """
    if data_term not in DATA_TERMS:
        raise ValueError(f"data_term must be one of {DATA_TERMS}, got {data_term!r}")
    if fixed_feat.shape != moving_feat.shape:
        raise ValueError(f"fixed {tuple(fixed_feat.shape)} and moving {tuple(moving_feat.shape)} features differ in shape")
    grid = fixed_feat.shape[2:]
    if data_mask is not None and tuple(data_mask.shape) != tuple(grid):
        raise ValueError(f"data_mask {tuple(data_mask.shape)} must have the grid of the features {tuple(grid)}")
    with torch.inference_mode(False), torch.enable_grad():
        fixed_feat, moving_feat = fixed_feat.detach().float().clone(), moving_feat.detach().float().clone()
        param = torch.nn.Parameter(resize_field(disp_init.detach().float().clone(), grid))
        optimiser = torch.optim.Adam([param], lr=lr, eps=adam_eps)
        if data_mask is not None:
            voxels = data_mask.flatten().nonzero().squeeze(1).to(fixed_feat.device)
            positions = identity_grid(grid, fixed_feat.device).flatten(2)[:, :, voxels].transpose(1, 2)
            fixed_points = fixed_feat.flatten(2)[:, :, voxels]
        for _ in range(iterations):
            optimiser.zero_grad(set_to_none=True)
            field = box_filter(param, smooth_pools)
            if data_mask is None:
                data = _data_cost(fixed_feat, warp(moving_feat, field), data_term)
            else:
                data = _masked_data_cost(fixed_points, moving_feat, field, voxels, positions, data_mask.numel(),
                                         data_term)
            smooth = sum(torch.diff(field, dim=axis).pow(2).mean() for axis in range(2, field.dim()))
            (data_weight * data + smooth_weight * smooth).backward()
            optimiser.step()
        with torch.no_grad():
            field = box_filter(param, smooth_pools)
        field = field.detach().to(disp_init.dtype)
        return field if return_grid else resize_field(field, disp_init.shape[2:])
