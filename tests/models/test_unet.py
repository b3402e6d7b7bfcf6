"""The UNet velocity field: shapes, size, zero-initialised output, gradients, time conditioning."""

import pytest
import torch

from lightning_curate.models.flow_matching import FlowMatching
from lightning_curate.models.mlp import MLPVelocity, SinusoidalTimeEmbedding
from lightning_curate.models.unet import UNetVelocity, num_parameters


def _perturb_head(net):
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        net.out_conv.weight.copy_(torch.randn(net.out_conv.weight.shape, generator=g) * 0.1)
        net.out_conv.bias.copy_(torch.randn(net.out_conv.bias.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kwargs, shape", [
    (dict(), (3, 1, 8, 8)),
    (dict(attention=True, num_res_blocks=2), (3, 1, 8, 8)),
    (dict(in_channels=3, base_channels=16, channel_mults=[1, 2, 2], attention=True, attention_heads=2,
          dropout=0.1), (2, 3, 32, 32)),
])
def test_output_shape_equals_input(kwargs, shape):
    torch.manual_seed(0)
    net = UNetVelocity(**kwargs)
    _perturb_head(net)
    x = torch.randn(shape)
    out = net(x, torch.rand(shape[0]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.abs().sum() > 0
    # Non-square inputs work too when both sides are divisible.
    y = torch.randn(shape[0], shape[1], shape[2] * 2, shape[3])
    assert net(y, torch.rand(shape[0])).shape == y.shape


def test_tiny_digits_config_is_small_and_cifar_config_is_usual():
    assert num_parameters(UNetVelocity()) < 1_000_000
    assert num_parameters(UNetVelocity(in_channels=1, base_channels=32, channel_mults=[1, 2])) < 1_000_000
    # The usual CIFAR-10 UNet (DDPM-sized: about 35 M parameters); built, not run.
    cifar = UNetVelocity(in_channels=3, base_channels=128, channel_mults=[1, 2, 2, 2], num_res_blocks=2,
                         attention=True, dropout=0.1)
    assert 30_000_000 < num_parameters(cifar) < 40_000_000


def test_output_is_exactly_zero_at_init():
    torch.manual_seed(0)
    net = UNetVelocity()
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4))
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNetVelocity(attention=True)
    _perturb_head(net)
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4))
    (out ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_divisibility_and_config_errors():
    net = UNetVelocity(channel_mults=[1, 2, 2])
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(2, 1, 6, 8), torch.rand(2))
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="t must have shape"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match="groups"):
        UNetVelocity(base_channels=12, groups=8)
    with pytest.raises(ValueError, match=r"channel_mults must be a non-empty list of ints >= 1, got \[\]"):
        UNetVelocity(channel_mults=[])
    with pytest.raises(ValueError, match="attention_heads"):
        UNetVelocity(base_channels=24, channel_mults=[1], groups=8, attention=True, attention_heads=5)


@pytest.mark.parametrize("make, match", [
    (lambda: UNetVelocity(in_channels=0), "in_channels must be an int >= 1, got 0"),
    (lambda: UNetVelocity(num_res_blocks=True), "num_res_blocks must be an int >= 1, got True"),
    (lambda: UNetVelocity(channel_mults=[1, 0]), r"channel_mults\[1\] must be an int >= 1, got 0"),
    (lambda: UNetVelocity(channel_mults=[1, 2.0]), r"channel_mults\[1\] must be an int >= 1, got 2.0"),
    (lambda: UNetVelocity(time_dim=7), "time_dim must be an even int >= 2, got 7"),
    (lambda: UNetVelocity(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (lambda: UNetVelocity(dropout=-0.1), "dropout must be a finite number >= 0.0, got -0.1"),
    (lambda: MLPVelocity(dim=0), "dim must be an int >= 1, got 0"),
    (lambda: MLPVelocity(hidden=2.5), "hidden must be an int >= 1, got 2.5"),
    (lambda: MLPVelocity(depth=0), r"depth \(the number of hidden layers\) must be an int >= 1, got 0"),
    (lambda: MLPVelocity(time_dim=3), "time_dim must be an even int >= 2, got 3"),
    (lambda: MLPVelocity(activation="swish"), r"activation must be one of \('gelu', 'relu', 'silu', 'tanh'\)"),
    (lambda: SinusoidalTimeEmbedding(8, scale=0.0), "scale must be a finite number > 0.0, got 0.0"),
])
def test_velocity_net_arguments_are_checked_by_name(make, match):
    """The UNet and the MLP velocity nets (they share the time embedding) name the bad argument."""
    with pytest.raises(ValueError, match=match):
        make()


def test_time_conditioning_changes_the_output():
    torch.manual_seed(0)
    net = UNetVelocity()
    _perturb_head(net)
    net.eval()
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    # Same t gives the same output: the difference comes from t alone.
    same = net(x, torch.tensor([0.1, 0.1]))
    assert torch.allclose(same[0], same[1], atol=1e-6)
    # A scalar t is broadcast over the batch.
    assert torch.allclose(net(x, torch.tensor(0.1)), same, atol=1e-6)


def test_flow_matching_with_unet_smoke():
    torch.manual_seed(0)
    model = FlowMatching(UNetVelocity(base_channels=16), [1, 8, 8], steps=4, ema_decay=0.9)
    opt = torch.optim.Adam(model.velocity.parameters(), lr=1e-3)
    data = torch.rand(16, 1, 8, 8) * 2 - 1
    losses = []
    for _ in range(3):
        loss = model.loss(data)
        assert loss.dim() == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_ema()
        losses.append(loss.item())
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b)
