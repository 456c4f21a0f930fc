import pytest
import torch

from regframe.label_groups import LABEL_GROUPS, group_lookup, grouped_dice, merge_labels


def test_lpba40_groups_cover_the_56_structures_once():
    codes = [code for group in LABEL_GROUPS["lpba40"].values() for code in group]
    assert len(codes) == len(set(codes)) == 56
    assert len(LABEL_GROUPS["lpba40"]) == 10


def test_merge_labels_maps_codes_to_group_indices():
    groups = {"a": (21, 22), "b": (182,)}
    label = torch.tensor([[0, 21, 22], [182, 5, 21]])
    assert merge_labels(label, groups).tolist() == [[0, 1, 1], [2, 0, 1]]


def test_grouped_dice_known_answer():
    groups = {"left_right": (1, 2), "other": (3,)}
    fixed = torch.tensor([[1, 1, 2, 2], [3, 3, 0, 0]])
    # structure Dice of 1 and 2 would be 0 (swapped), the merged group is matched exactly
    warped = torch.tensor([[2, 2, 1, 1], [3, 0, 0, 0]])
    scores = grouped_dice(fixed, warped, groups)
    assert scores["left_right"] == pytest.approx(1.0)
    assert scores["other"] == pytest.approx(2 * 1 / (2 + 1))


def test_groups_absent_from_the_fixed_map_are_not_scored_and_overlaps_are_refused():
    assert list(grouped_dice(torch.tensor([[1, 0]]), torch.tensor([[1, 3]]), {"a": (1,), "b": (3,)})) == ["a"]
    with pytest.raises(ValueError, match="both groups"):
        group_lookup({"a": (1, 2), "b": (2,)}, 3)
