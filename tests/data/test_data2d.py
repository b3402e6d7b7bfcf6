import math

import pytest
import torch

from lightning_curate.data.toy2d import DATASETS, ModeAssigner, Toy2D, make_2d, mode_centers, mode_names, num_modes

MIXTURE_STD = {"mog8": 0.3, "grid25": 0.15}


@pytest.mark.parametrize("name", DATASETS)
def test_shapes_dtypes_and_exact_mode_shares(name):
    n = 803  # not a multiple of any mode count: the remainder goes to the first modes
    x, y = make_2d(name, n, seed=0)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert torch.isfinite(x).all()
    m = num_modes(name)
    expected = torch.tensor([n // m + (1 if i < n % m else 0) for i in range(m)])
    assert torch.equal(torch.bincount(y, minlength=m), expected)
    assert len(mode_names(name)) == m


@pytest.mark.parametrize("name", DATASETS)
def test_same_seed_same_points_different_seed_different(name):
    x1, y1 = make_2d(name, 500, seed=3)
    x2, y2 = make_2d(name, 500, seed=3)
    x3, _ = make_2d(name, 500, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.allclose(x1, x3)


@pytest.mark.parametrize("name", DATASETS)
def test_points_are_shuffled_not_sorted_by_mode(name):
    _, y = make_2d(name, 400, seed=0)
    assert (y[1:] != y[:-1]).sum() > 50  # sorted labels would change only M - 1 times


def test_mog8_centres_on_the_ring_at_angle_2pi_i_over_8():
    c = mode_centers("mog8")
    assert c.shape == (8, 2)
    angles = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    expected = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(c[2], torch.tensor([0.0, 4.0]), atol=1e-6, rtol=0)


def test_grid25_centres_spacing_2_centred_at_origin():
    c = mode_centers("grid25")
    assert c.shape == (25, 2)
    torch.testing.assert_close(c.mean(dim=0), torch.zeros(2), atol=1e-6, rtol=0)
    assert set(c[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert set(c[:, 1].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    d = torch.cdist(c, c) + 100 * torch.eye(25)
    torch.testing.assert_close(d.min(), torch.tensor(2.0))


@pytest.mark.parametrize("name", ["mog8", "grid25"])
def test_mixture_points_of_mode_i_are_near_centre_i(name):
    std = MIXTURE_STD[name]
    x, y = make_2d(name, 5000, seed=1)
    dist = (x - mode_centers(name)[y]).norm(dim=1)
    # |x - c| of an isotropic 2D Gaussian is Rayleigh(std): mean std * sqrt(pi / 2).
    assert abs(dist.mean().item() - std * math.sqrt(math.pi / 2)) < 0.05 * std
    assert dist.max().item() < 6 * std


@pytest.mark.parametrize("name", ["mog8", "grid25"])
def test_zero_noise_puts_every_point_on_its_centre(name):
    x, y = make_2d(name, 100, seed=0, noise=0.0)
    torch.testing.assert_close(x, mode_centers(name)[y])


def test_moons_labels_and_scale():
    x, y = make_2d("moons", 2000, seed=0, noise=0.0)
    # Noise-free: each point lies on its (shifted, scaled x2) unit arc.
    upper = x[y == 0] / 2 + torch.tensor([0.5, 0.25])
    lower = x[y == 1] / 2 + torch.tensor([0.5, 0.25])
    torch.testing.assert_close(upper.norm(dim=1), torch.ones(len(upper)))
    torch.testing.assert_close((lower - torch.tensor([1.0, 0.5])).norm(dim=1), torch.ones(len(lower)))
    assert (upper[:, 1] >= -1e-6).all() and (lower[:, 1] <= 0.5 + 1e-6).all()
    # moon centres are the middles of the arcs, on the data
    torch.testing.assert_close(mode_centers("moons"), torch.tensor([[-1.0, 1.5], [1.0, -1.5]]))


def test_circles_inner_is_label_0_outer_label_1():
    x, y = make_2d("circles", 2000, seed=0, noise=0.0)
    r = x.norm(dim=1)
    torch.testing.assert_close(r[y == 0], torch.full(((y == 0).sum().item(),), 1.5))
    torch.testing.assert_close(r[y == 1], torch.full(((y == 1).sum().item(),), 3.0))
    assert mode_names("circles") == ["inner", "outer"]


@pytest.mark.parametrize("name, min_accuracy", [("mog8", 0.99), ("grid25", 0.99),
                                                ("moons", 0.95), ("circles", 0.95)])
def test_mode_assigner_recovers_labels_of_fresh_real_data(name, min_accuracy):
    assigner = ModeAssigner(name, num_reference=2048)
    x, y = make_2d(name, 3000, seed=999)  # a seed different from the reference's
    labels = assigner(x)
    assert labels.dtype == torch.int64 and labels.shape == (3000,)
    assert (labels == y).float().mean().item() > min_accuracy


@pytest.mark.parametrize("name", ["mog8", "grid25"])
def test_mode_assigner_labels_each_centre_with_its_own_mode(name):
    centers = mode_centers(name)
    assert torch.equal(ModeAssigner(name, num_reference=2048)(centers), torch.arange(len(centers)))


def test_mode_assigner_chunking_does_not_change_labels():
    x, _ = make_2d("moons", 1000, seed=5, noise=0.4)
    whole = ModeAssigner("moons", num_reference=512, chunk_size=4096)(x)
    chunked = ModeAssigner("moons", num_reference=512, chunk_size=7)(x)
    assert torch.equal(whole, chunked)


def test_mode_assigner_is_deterministic_and_not_checkpointed():
    a, b = ModeAssigner("mog8", num_reference=256), ModeAssigner("mog8", num_reference=256)
    assert torch.equal(a.reference, b.reference)
    assert a.state_dict() == {}


def test_mode_assigner_rejects_wrong_shapes():
    assigner = ModeAssigner("mog8", num_reference=64)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        assigner(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        assigner(torch.zeros(5))


def test_errors():
    with pytest.raises(ValueError, match="mog8, grid25, moons, circles"):
        make_2d("swissroll", 10, seed=0)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        make_2d("mog8", 0, seed=0)
    with pytest.raises(ValueError, match="seed must be an int, got 1.5"):
        make_2d("mog8", 10, seed=1.5)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0.0, got -1.0"):
        make_2d("mog8", 10, seed=0, noise=-1.0)
    with pytest.raises(ValueError, match="noise must be a finite number, got nan"):
        make_2d("mog8", 10, seed=0, noise=math.nan)
    with pytest.raises(ValueError, match="circles"):
        mode_centers("circles")
    with pytest.raises(ValueError, match="valid names"):
        ModeAssigner("nope")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        ModeAssigner("mog8", chunk_size=0)
    with pytest.raises(ValueError, match="unknown 2D dataset 'nope'; valid names are mog8, grid25, moons, circles"):
        Toy2D("nope")
    with pytest.raises(ValueError, match="num_heldout must be an int >= 1, got 0"):
        Toy2D(num_heldout=0)


@pytest.mark.parametrize("name", ["mog8", "grid25"])
def test_mode_assigner_labels_mixtures_by_the_nearest_centre(name):
    x = (torch.rand(5000, 2, generator=torch.Generator().manual_seed(3)) - 0.5) * 14  # between the modes too
    expected = torch.cdist(x.double(), mode_centers(name).double()).argmin(dim=1)
    assert torch.equal(ModeAssigner(name, chunk_size=777)(x), expected)
