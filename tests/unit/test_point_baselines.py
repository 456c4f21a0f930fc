"""Known answers for the point baselines of the CST paper (Table 3): Chamfer distance, local
Laplacian, synthetic deformations, landmark TRE, and a few training steps on a toy cloud."""

from __future__ import annotations

import math

import pytest
import torch

from regframe.errors import RegframeInputError
from regframe.estimators.points import IdentityPointEstimator, PointCloudEstimator
from regframe.features.graph_cnn import GraphFeatureNet
from regframe.methods.points_base import mask_box
from regframe.methods.points_metric_supervised import PointMetricSupervised
from regframe.methods.points_synthetic import PointSyntheticSupervised
from regframe.objectives.point_losses import chamfer_distance, local_laplacian
from regframe.optim.sparse_lbp import SparseLBP
from regframe.point_deformations import (DeformationSampler, RBFDeformation, RigidDeformation, random_rotations,
                                         synthetic_pair)
from regframe.point_metrics import keypoint_tre, landmark_tre


def grid_cloud(spacing: float = 10.0, size: int = 4) -> torch.Tensor:
    """A regular ``size³`` grid of points ``(1, size³, 3)`` mm with ``spacing`` mm."""
    axis = torch.arange(size, dtype=torch.float32) * spacing
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)


def test_chamfer_of_identical_clouds_is_zero():
    cloud = grid_cloud()
    assert chamfer_distance(cloud, cloud).item() == 0.0


def test_chamfer_of_a_small_translation_is_its_squared_length_both_ways():
    cloud = grid_cloud(spacing=10.0)
    shift = torch.tensor([1.0, 2.0, -1.5])  # |t| < half the spacing: every point's nearest is its own copy
    moved = cloud + shift
    assert chamfer_distance(cloud, moved).item() == pytest.approx(7.25, rel=1e-5)  # 1 + 4 + 2.25 mm²
    assert chamfer_distance(moved, cloud).item() == pytest.approx(7.25, rel=1e-5)


def test_chamfer_weights_the_two_directions_equally():
    first = torch.tensor([[[0.0, 0.0, 0.0]]])
    second = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])
    # first -> second: 0; second -> first: (0 + 9) / 2; chamfer = (0 + 4.5) / 2 mm²
    assert chamfer_distance(first, second).item() == pytest.approx(2.25)
    assert chamfer_distance(second, first).item() == pytest.approx(2.25)


def test_local_laplacian_of_a_constant_field_is_zero():
    points = torch.rand(2, 30, 3) * 50
    constant = torch.tensor([3.0, -1.0, 2.0]).expand(2, 30, 3)
    assert local_laplacian(points, constant, k=5).item() == pytest.approx(0.0, abs=1e-10)


def test_local_laplacian_matches_a_hand_computed_value():
    points = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0]]])
    displacements = torch.zeros(1, 4, 3)
    displacements[0, :, 0] = torch.tensor([0.0, 2.0, 0.0, 4.0])
    # 2 nearest: 0 -> {1, 3}, 1 -> {0, 3}, 3 -> {1, 0}, 7 -> {3, 1}; neighbour means 1, 0, 1, 1
    # squared differences 1, 4, 1, 9 -> mean 3.75 mm²
    assert local_laplacian(points, displacements, k=2).item() == pytest.approx(3.75)


def test_random_rotations_are_proper_and_within_the_angle():
    rotations = random_rotations(64, 20.0, torch.Generator().manual_seed(0))
    identity = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), identity, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(64), atol=1e-5)
    angles = torch.rad2deg(torch.acos(((rotations.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert angles.max() <= 20.0 + 1e-3 and angles.max() > 10.0


def test_rigid_pair_maps_fixed_points_onto_the_transformed_cloud():
    generator = torch.Generator().manual_seed(1)
    source = torch.rand(2, 50, 3, generator=generator) * 100
    deformation = DeformationSampler("rigid", max_rotation_deg=15.0, max_translation_mm=8.0)(source, generator)
    fixed, moving, displacement = synthetic_pair(source, 20, deformation, generator)
    rotation, centre, translation = deformation.rotation, deformation.centre, deformation.translation
    def transformed(p: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bnj->bni", rotation, p - centre[:, None]) + centre[:, None] + translation[:, None]
    assert torch.allclose(fixed + displacement, transformed(fixed), atol=1e-4)
    assert translation.abs().max() <= 8.0
    # the moving cloud is the other 30 source points, transformed: undo the transform to find them
    back = torch.einsum("bji,bnj->bni", rotation, moving - centre[:, None] - translation[:, None]) + centre[:, None]
    for item in range(2):
        rebuilt = torch.cat([fixed[item], back[item]])
        assert torch.allclose(rebuilt[torch.argsort(rebuilt[:, 0])], source[item][torch.argsort(source[item][:, 0])],
                              atol=1e-3)
        assert torch.cdist(fixed[item], back[item]).min() > 1e-3  # disjoint rows: no shared point


def test_independent_subsets_pair_keeps_every_row_in_the_moving_cloud():
    generator = torch.Generator().manual_seed(3)
    source = torch.rand(1, 30, 3, generator=generator) * 100
    translation = torch.tensor([[4.0, -2.0, 1.0]])
    deformation = RigidDeformation(torch.eye(3)[None], source.mean(dim=1), translation)
    fixed, moving, displacement = synthetic_pair(source, 10, deformation, generator, disjoint=False)
    assert moving.shape == (1, 30, 3) and torch.allclose(displacement, translation.expand(1, 10, 3))
    back = moving - translation
    assert (fixed[0, :, None] - back[0, None]).norm(dim=-1).min(dim=1).values.max() < 1e-4  # every fixed point's partner is there
    assert torch.allclose(back[0][torch.argsort(back[0, :, 0])], source[0][torch.argsort(source[0, :, 0])], atol=1e-4)
    fixed, jittered, target = synthetic_pair(source, 10, deformation, generator, disjoint=False, moving_jitter_mm=1.0)
    assert torch.allclose(target, translation.expand(1, 10, 3))  # the target is the true displacement, not the noise
    nearest = (fixed[0, :, None] - (jittered - translation)[0, None]).norm(dim=-1).min(dim=1).values
    assert nearest.min() > 1e-3 and nearest.mean() < 3.0  # partners present, about 1.6 mm off


def test_field_pair_displacement_is_the_sum_of_the_rbfs_at_the_points():
    generator = torch.Generator().manual_seed(2)
    source = torch.rand(1, 40, 3, generator=generator) * 100
    deformation = DeformationSampler("field", amplitude_mm=5.0, width_mm=30.0, num_centres=3)(source, generator)
    assert isinstance(deformation, RBFDeformation) and deformation.weights.abs().max() <= 5.0
    fixed, moving, displacement = synthetic_pair(source, 10, deformation, generator)
    expected = torch.zeros_like(fixed)
    for centre, weight in zip(deformation.centres[0], deformation.weights[0]):
        expected += torch.exp(-((fixed - centre) ** 2).sum(-1, keepdim=True) / (2 * 30.0**2)) * weight
    assert torch.allclose(displacement, expected, atol=1e-5)
    assert moving.shape == (1, 30, 3)


def test_synthetic_options_are_checked():
    with pytest.raises(RegframeInputError, match="kind"):
        PointSyntheticSupervised(kind="affine")
    with pytest.raises(RegframeInputError, match="fixed_count"):
        synthetic_pair(torch.rand(1, 10, 3), 10, DeformationSampler()(torch.rand(1, 10, 3)))


def test_landmark_and_keypoint_tre_of_a_translation():
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(40, 3, generator=generator) * 100
    landmarks = torch.rand(6, 3, generator=generator) * 80 + 10
    shift = torch.tensor([3.0, 0.0, -4.0])
    exact = shift.expand(40, 3)
    assert torch.allclose(landmark_tre(points, exact, landmarks, landmarks + shift), torch.zeros(6, dtype=torch.float64),
                          atol=1e-4)  # float32 landmarks
    assert torch.allclose(landmark_tre(points, torch.zeros(40, 3), landmarks, landmarks + shift),
                          torch.full((6,), 5.0, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(keypoint_tre(points, torch.zeros(40, 3), points + shift), torch.full((40,), 5.0))


def test_metric_supervised_loss_of_the_identity_is_the_chamfer_distance():
    generator = torch.Generator().manual_seed(4)
    batch = {"fixed_points": torch.rand(2, 30, 3, generator=generator) * 50,
             "moving_points": torch.rand(2, 45, 3, generator=generator) * 50}
    method = PointMetricSupervised(IdentityPointEstimator(), smooth_weight=3.0)
    loss = method.training_step(batch, 0)
    assert loss.item() == pytest.approx(chamfer_distance(batch["fixed_points"], batch["moving_points"]).item())


def small_estimator() -> PointCloudEstimator:
    return PointCloudEstimator(GraphFeatureNet(k=6, channels=(16, 16), out_channels=8, length_scale=10.0),
                               SparseLBP(num_candidates=8, k=6, iterations=2, temperature=0.05))


def test_synthetic_training_reduces_the_end_point_error():
    """A toy 'vessel' cloud: 80 tight clusters of 6 points (0.2 mm jitter, about 14 mm apart), so that
    disjoint fixed and moving subsets still share structure; 40 steps on rigid pairs (translation up
    to 6 mm) lower the end-point error on held-aside synthetic pairs."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(5)
    anchors = torch.rand(80, 3, generator=generator) * 60
    cloud = (anchors.repeat_interleave(6, 0) + 0.2 * torch.randn(480, 3, generator=generator))[None].expand(4, -1, -1)
    method = PointSyntheticSupervised(small_estimator(), kind="rigid", max_rotation_deg=5.0, max_translation_mm=6.0)
    optimiser = torch.optim.Adam(method.parameters(), lr=3e-3)
    checks = [synthetic_pair(cloud, 160, method.deformations(cloud, generator), generator) for _ in range(4)]

    def epe() -> float:
        with torch.no_grad():
            return sum((method(f, m) - d).norm(dim=-1).mean().item() for f, m, d in checks) / len(checks)

    before = epe()
    batch = {"fixed_points": cloud[:, :160], "moving_points": cloud}
    for _ in range(40):
        optimiser.zero_grad()
        method.training_step(batch, 0).backward()
        optimiser.step()
    after = epe()
    assert math.isfinite(after) and after < 0.9 * before, (before, after)


def test_mask_box_is_the_bounding_box_grown_by_the_margin():
    mask = torch.zeros(10, 12, 14, dtype=torch.bool)
    mask[3:5, 4:9, 0:2] = True
    assert mask_box(mask, margin=2) == (slice(1, 7), slice(2, 11), slice(0, 4))
    assert mask_box(torch.zeros(4, 4, 4, dtype=torch.bool)) == (slice(None),) * 3


def test_test_step_of_a_translation_scores_its_tre_and_a_smooth_field():
    """A constant displacement has a constant Jacobian (SDlogJ 0, no folding); the TRE of a known
    translation is its error against the true shift."""
    points = grid_cloud(spacing=6.0, size=4) + 3.0
    shift = torch.tensor([2.0, -1.0, 0.5])
    mask = torch.zeros(1, 1, 24, 24, 24, dtype=torch.bool)
    mask[..., 2:20, 2:20, 2:20] = True
    landmarks = points[:, :5] + 1.0
    batch = {"fixed_points": points, "moving_points": points + shift, "fixed_landmarks": landmarks,
             "moving_landmarks": landmarks + shift + torch.tensor([3.0, 0.0, 0.0]), "fixed_mask": mask,
             "spacing": torch.tensor([[1.0, 1.0, 1.0]])}

    class Translation(IdentityPointEstimator):
        def forward(self, fixed_points, moving_points):
            return shift.expand_as(fixed_points)

    scores = PointSyntheticSupervised(estimator=Translation()).test_step(batch, 0)
    assert scores["test/tre_mm"] == pytest.approx(3.0, abs=1e-4)
    assert scores["test/initial_tre_mm"] == pytest.approx(math.sqrt(5.0 ** 2 + 1 + 0.25), abs=1e-4)
    assert scores["test/sdlogj"] == pytest.approx(0.0, abs=1e-6) and scores["test/fold_pct"] == 0.0
