import math

import pytest
import torch

from lightning_curate.data.toy2d import mode_centers
from lightning_curate.rewards.base import RewardModel
from lightning_curate.rewards.geometric import ClippedDistanceReward, LinearReward, RadialReward


def test_clipped_distance_hand_values():
    reward = ClippedDistanceReward(centers=[[0.0, 0.0], [10.0, 0.0]], radius=0.5, gamma=2.0)
    x = torch.tensor([
        [0.0, 0.0],    # on a centre
        [0.3, 0.0],    # inside the radius
        [0.0, 0.5],    # on the radius boundary
        [10.0, -0.4],  # inside the second centre's ball
        [3.0, 4.0],    # distance 5 to the first centre
        [10.0, 2.0],   # distance 2 to the second
        [5.0, 0.0],    # equidistant (5) from both
    ])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, -2 * 4.5, -2 * 1.5, -2 * 4.5])
    out = reward(x)
    assert out.shape == (7,) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert out.max().item() == 0.0


def test_clipped_distance_radius_zero_is_negative_distance():
    reward = ClippedDistanceReward(centers=[[1.0, 1.0]], radius=0.0)
    torch.testing.assert_close(reward(torch.tensor([[4.0, 5.0]])), torch.tensor([-5.0]))


def test_targets_name_the_same_centres_as_explicit_ones():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 4
    explicit = ClippedDistanceReward(centers=mode_centers("mog8")[[0, 3]].tolist(), radius=0.7, gamma=3.0)
    by_kwargs = ClippedDistanceReward(dataset="mog8", targets=[0, 3], radius=0.7, gamma=3.0)
    by_classmethod = ClippedDistanceReward.from_modes("mog8", [0, 3], radius=0.7, gamma=3.0)
    torch.testing.assert_close(by_kwargs.centers, torch.tensor([[4.0, 0.0], [4 * math.cos(3 * math.pi / 4),
                                                                              4 * math.sin(3 * math.pi / 4)]]))
    torch.testing.assert_close(by_kwargs(x), explicit(x))
    torch.testing.assert_close(by_classmethod(x), explicit(x))
    # a point of mode 1 (not a target) is penalised, one of mode 0 is not
    centers = mode_centers("mog8")
    assert by_kwargs(centers[[0]]).item() == 0.0
    assert by_kwargs(centers[[1]]).item() < -1.0


def test_linear_and_radial_hand_values():
    linear = LinearReward(direction=[3.0, 4.0], gamma=2.0)
    torch.testing.assert_close(linear(torch.tensor([[1.0, 1.0], [0.0, 0.0], [-3.0, -4.0]])),
                               torch.tensor([2.0 * 7 / 5, 0.0, -10.0]))
    radial = RadialReward(center=[1.0, 1.0], gamma=0.5)
    torch.testing.assert_close(radial(torch.tensor([[4.0, 5.0], [1.0, 1.0]])), torch.tensor([-2.5, 0.0]))
    torch.testing.assert_close(RadialReward()(torch.tensor([[3.0, 4.0]])), torch.tensor([-5.0]))


def test_float64_input_gives_float32_rewards():
    out = RadialReward()(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    assert out.dtype == torch.float32


def test_shape_errors():
    reward = ClippedDistanceReward(centers=[[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\[N, 2\].*\(5, 3\)"):
        reward(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        reward(torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        LinearReward(direction=[1.0, 0.0, 0.0])(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        RadialReward()(torch.zeros(4, 2, 1))


def test_constructor_errors():
    with pytest.raises(ValueError, match="not both"):
        ClippedDistanceReward(centers=[[0.0, 0.0]], dataset="mog8", targets=[0])
    with pytest.raises(ValueError, match="needs centers"):
        ClippedDistanceReward()
    with pytest.raises(ValueError, match="needs centers"):
        ClippedDistanceReward(dataset="mog8")
    with pytest.raises(ValueError, match=r"targets must be mode indices in 0\.\.7 for 'mog8', got \[8\]"):
        ClippedDistanceReward(dataset="mog8", targets=[8])
    with pytest.raises(ValueError, match=r"targets must be mode indices in 0\.\.7 for 'mog8', got \[True, 1\.0\]"):
        ClippedDistanceReward(dataset="mog8", targets=[0, True, 1.0])
    with pytest.raises(ValueError, match="valid names"):
        ClippedDistanceReward(dataset="nope", targets=[0])
    with pytest.raises(ValueError, match="same dimension"):
        ClippedDistanceReward(centers=[[0.0, 0.0], [1.0]])
    with pytest.raises(ValueError, match="at least one"):
        ClippedDistanceReward(centers=[])
    with pytest.raises(ValueError, match="radius must be a finite number >= 0.0, got -0.1"):
        ClippedDistanceReward(centers=[[0.0, 0.0]], radius=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        ClippedDistanceReward(centers=[[0.0, 0.0]], gamma=math.inf)
    with pytest.raises(ValueError, match="gamma"):
        RadialReward(gamma=math.nan)
    with pytest.raises(ValueError, match="non-zero"):
        LinearReward(direction=[0.0, 0.0])


def test_base_class_needs_score():
    with pytest.raises(NotImplementedError, match="score"):
        RewardModel()(torch.zeros(2, 2))


def test_works_under_inference_mode():
    reward = ClippedDistanceReward(dataset="grid25", targets=[12], radius=0.5, gamma=5.0)
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    expected = reward(x)
    with torch.inference_mode():
        out = reward(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, torch.tensor([0.0, -5.0 * 2.5]))


@pytest.mark.parametrize("reward", [
    ClippedDistanceReward(centers=[[0.0, 0.0]]), LinearReward(direction=[1.0, 2.0]), RadialReward(),
])
def test_constants_are_buffers_so_rewards_follow_the_module_device(reward):
    # On the meta device nothing is computed: any constant left on the CPU would raise.
    moved = reward.to("meta")
    out = moved(torch.zeros(3, 2, device="meta"))
    assert out.device.type == "meta" and out.shape == (3,)
    assert reward.state_dict() == {}  # constants come from the config, not from checkpoints
