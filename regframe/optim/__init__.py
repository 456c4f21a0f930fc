"""Reusable optimisation blocks: correlation, coupled convex optimisation, ICE, Adam IO, upsampling."""

from regframe.optim.adam import adam_instance_optimisation
from regframe.optim.consistency import inverse_consistent
from regframe.optim.convex import hard_coupled_convex, soft_coupled_convex
from regframe.optim.correlation import cost_volume, displacement_offsets
from regframe.optim.instance import InstanceOptimisation
from regframe.optim.smoothing import box_filter, pool
from regframe.optim.upsample import upsample_field

__all__ = ["InstanceOptimisation", "adam_instance_optimisation", "box_filter", "cost_volume", "displacement_offsets",
           "hard_coupled_convex", "inverse_consistent", "pool", "soft_coupled_convex", "upsample_field"]
