"""Named groupings of label codes into larger regions, scored as one label each.

The JRSS paper reports LPBA40 over "5 large regions and 5 independent structures" (after Shattuck
et al. 2008) without listing them. :data:`LABEL_GROUPS` ``["lpba40"]`` is regframe's reading, covering
all 56 LONI codes once: the frontal (21–34), parietal (41–50), occipital (61–68) and temporal (81–92)
lobes and the cingulate + insular cortex (101–102, 121–122) as the regions; hippocampus (161–162),
putamen (163–164), caudate (165–166), cerebellum (181) and brainstem (182) as the structures; left
and right merged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from regframe.errors import RegframeInputError
from regframe.metrics import dice_per_label

LABEL_GROUPS: dict[str, dict[str, tuple[int, ...]]] = {
    "lpba40": {
        "frontal": tuple(range(21, 35)),
        "parietal": tuple(range(41, 51)),
        "occipital": tuple(range(61, 69)),
        "temporal": tuple(range(81, 93)),
        "cingulate_insula": (101, 102, 121, 122),
        "hippocampus": (161, 162),
        "putamen": (163, 164),
        "caudate": (165, 166),
        "cerebellum": (181,),
        "brainstem": (182,),
    },
}


def named_groups(name: str) -> dict[str, tuple[int, ...]]:
    """The grouping ``name`` of :data:`LABEL_GROUPS`; an input error listing the known names otherwise."""
    if name not in LABEL_GROUPS:
        raise RegframeInputError(f"label groups {name!r} unknown; known: {sorted(LABEL_GROUPS)}")
    return LABEL_GROUPS[name]


def group_lookup(groups: Mapping[str, Sequence[int]], max_code: int) -> Tensor:
    """``(max_code + 1,)`` long table: code → 1-based index of its group in ``groups``, 0 elsewhere."""
    table = torch.zeros(max_code + 1, dtype=torch.long)
    seen: dict[int, str] = {}
    for index, (name, codes) in enumerate(groups.items(), start=1):
        for code in codes:
            if code in seen:
                raise ValueError(f"label code {code} is in both groups {seen[code]!r} and {name!r}")
            if not 0 < code:
                raise ValueError(f"group {name!r}: label codes must be > 0, got {code}")
            seen[code] = name
            if code <= max_code:
                table[code] = index
    return table


def merge_labels(label: Tensor, groups: Mapping[str, Sequence[int]]) -> Tensor:
    """Label map of codes → map of group indices (1..G in the order of ``groups``; 0 for codes in no group)."""
    if label.is_floating_point() or label.min() < 0:
        raise ValueError("label maps must hold non-negative integer codes")
    return group_lookup(groups, int(label.max()))[label.long()]


def grouped_dice(fixed_label: Tensor, warped_label: Tensor, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Dice of each group (its codes merged into one label) between the fixed and the warped moving map,
    for the groups present in the fixed map; ``{name: Dice}`` in [0, 1]."""
    fixed, warped = merge_labels(fixed_label, groups), merge_labels(warped_label, groups)
    present = [index for index in range(1, len(groups) + 1) if (fixed == index).any()]
    scores = dice_per_label(fixed, warped, present)
    names = list(groups)
    return {names[index - 1]: scores[index] for index in present}
