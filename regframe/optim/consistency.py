"""Inverse consistency (ICE): make a forward and a backward field approximately inverse."""

from __future__ import annotations

from torch import Tensor

from regframe.spatial import warp


def inverse_consistent(u_fm: Tensor, u_mf: Tensor, iterations: int = 15,
                       return_both: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Symmetrically correct ``u_fm`` (fixed->moving backward map, aligns moving to fixed) with the
    reverse estimate ``u_mf`` (aligns fixed to moving), both ``(B, D, *S)`` in voxels.

    Each iteration updates both from the previous iterates:
    ``u1 <- (u1 - u2∘(id+u1)) / 2`` and ``u2 <- (u2 - u1∘(id+u2)) / 2``; exact inverses are a fixed
    point. Returns the corrected ``u_fm`` (and the corrected ``u_mf`` with ``return_both``).
    """
    if u_fm.shape != u_mf.shape:
        raise ValueError(f"forward {tuple(u_fm.shape)} and backward {tuple(u_mf.shape)} fields differ in shape")
    u1, u2 = u_fm, u_mf
    for _ in range(iterations):
        u1, u2 = 0.5 * (u1 - warp(u2, u1)), 0.5 * (u2 - warp(u1, u2))
    return (u1, u2) if return_both else u1
