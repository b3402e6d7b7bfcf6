"""torchcfm's UNet as our generator: its own checkpoint format, its own samples, and the loop around it.

A small randomly initialised ``UNetModelWrapper`` is saved exactly as torchcfm's CIFAR-10 training
script saves (net_model, ema_model, sched, optim, step); loaded through ``TorchCFMUNet`` inside our
``FlowMatching``, it must sample what torchcfm's own sampling (torchdiffeq's ``odeint`` on the net,
as examples/images/cifar10/compute_fid.py does) gives for the same noise and solver.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from fakes import make_fake_cifar
from torch import nn
from torchdiffeq import odeint

from lightning_curate.data import CIFAR10, BlendingDataModule
from lightning_curate.loop import CurationModule, RetrainingLoop
from lightning_curate.models import FlowMatching, TorchCFMUNet
from lightning_curate.models.torchcfm import load_torchcfm_weights

torchcfm_unet = pytest.importorskip("torchcfm.models.unet.unet", reason="torchcfm is not installed "
                                    "(pip install --no-deps torchcfm, see the Makefile's setup)")

# A small UNet of the CIFAR-10 recipe's shape (attention at 16x16 included), fast on a CPU.
SMALL = dict(dim=(3, 32, 32), num_channels=32, num_res_blocks=1, channel_mult=[1, 2], num_heads=2,
             num_head_channels=16, attention_resolutions="16", dropout=0.1)


def _random_unet(seed: int) -> nn.Module:
    """torchcfm's UNet with every weight drawn at random (its own init zeroes the output conv)."""
    torch.manual_seed(seed)
    net = torchcfm_unet.UNetModelWrapper(**SMALL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def _save_like_torchcfm(path, net_model, ema_model, prefix=""):
    """The dict torchcfm's train_cifar10.py saves, with a real optimizer and warm-up scheduler state."""
    optim = torch.optim.Adam(net_model.parameters(), lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda=lambda step: min(step, 5000) / 5000)
    net_model(torch.rand(2), torch.randn(2, 3, 32, 32)).square().mean().backward()
    optim.step()
    sched.step()

    def weights(m):
        return {prefix + k: v for k, v in m.state_dict().items()}

    torch.save({"net_model": weights(net_model), "ema_model": weights(ema_model), "sched": sched.state_dict(),
                "optim": optim.state_dict(), "step": 20000}, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("torchcfm") / "otcfm_cifar10_weights_step_20000.pt"
    net, ema = _random_unet(0), _random_unet(1)
    _save_like_torchcfm(path, copy.deepcopy(net), ema)
    return path, ema


def _torchcfm_euler(net, x0, steps):
    """torchcfm's sampling: odeint(net, x, linspace(0, 1, steps + 1), method="euler") at the last time."""
    with torch.no_grad():
        return odeint(net.eval(), x0, torch.linspace(0, 1, steps + 1), method="euler")[-1]


def test_samples_equal_torchcfm_for_the_same_noise_and_solver(checkpoint):
    path, ema = checkpoint
    fm = FlowMatching(TorchCFMUNet(str(path), ema=True, **SMALL), data_shape=[3, 32, 32], solver="euler",
                      steps=6, ema_decay=0.0)
    ours = fm.sample(3, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    theirs = _torchcfm_euler(ema, noise, 6)
    assert ours.shape == (3, 3, 32, 32)
    assert (theirs - noise).abs().max() > 0.1  # the field is far from zero: the comparison means something
    assert torch.equal(ours, theirs)  # the same Euler steps on the same grid: bit for bit
    # The adaptive solver too (compute_fid.py's default: dopri5 at tolerance 1e-5).
    fm.solver = "dopri5"
    ours = fm.sample(3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = odeint(ema, noise, torch.linspace(0, 1, 2), rtol=1e-5, atol=1e-5, method="dopri5")[-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_euler_samples_equal_torchdyns_neural_ode(checkpoint):
    """compute_fid.py's Euler path: torchdyn's NeuralODE(net, solver="euler").trajectory on the same grid."""
    torchdyn_core = pytest.importorskip("torchdyn.core", reason="torchdyn is not installed (torchcfm's sampler in "
                                        "its examples; pip install --no-deps torchdyn torchcde torchsde trampoline)")
    path, ema = checkpoint
    fm = FlowMatching(TorchCFMUNet(str(path), ema=True, **SMALL), data_shape=[3, 32, 32], solver="euler",
                      steps=5, ema_decay=0.0)
    ours = fm.sample(2, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    node = torchdyn_core.NeuralODE(ema.eval(), solver="euler")
    with torch.no_grad():
        theirs = node.trajectory(noise, t_span=torch.linspace(0, 1, 6))[-1]
    assert torch.equal(ours, theirs)


def test_ema_chooses_the_averaged_weights_and_module_prefixes_are_removed(tmp_path, checkpoint):
    path, ema = checkpoint
    live = TorchCFMUNet(str(path), ema=False, **SMALL)
    averaged = TorchCFMUNet(str(path), ema=True, **SMALL)
    for key, value in ema.state_dict().items():
        assert torch.equal(averaged.unet.state_dict()[key], value)
    assert not all(torch.equal(live.unet.state_dict()[k], v) for k, v in ema.state_dict().items())
    # A checkpoint saved from DataParallel (keys "module.*") loads the same weights.
    wrapped = tmp_path / "parallel.pt"
    _save_like_torchcfm(wrapped, _random_unet(0), ema, prefix="module.")
    again = TorchCFMUNet(str(wrapped), ema=True, **SMALL)
    assert all(torch.equal(again.unet.state_dict()[k], v) for k, v in ema.state_dict().items())


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_checkpoints_are_refused_with_the_parameter_named(tmp_path, checkpoint, capsys):
    with pytest.raises(FileNotFoundError, match="checkpoint_path: no file"):
        TorchCFMUNet(str(tmp_path / "missing.pt"), **SMALL)
    evil = tmp_path / "evil.pt"
    torch.save({"ema_model": {}, "step": _Payload()}, evil)
    with pytest.raises(ValueError, match="checkpoint_path .*refused"):
        load_torchcfm_weights(evil)
    assert "code ran" not in capsys.readouterr().out
    torch.save([torch.ones(1)], tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected torchcfm's checkpoint"):
        load_torchcfm_weights(tmp_path / "other.pt")
    # The CIFAR-10 recipe's full-size configuration does not fit the small checkpoint: said, not half-loaded.
    with pytest.raises(ValueError, match="does not fit a UNet with .*num_channels=128"):
        TorchCFMUNet(str(checkpoint[0]))


def test_the_loop_curates_and_retrains_the_loaded_model(tmp_path, checkpoint):
    """A curated round on (fake) CIFAR-10 images, starting from the checkpoint's EMA weights."""
    path, ema = checkpoint
    make_fake_cifar(tmp_path, n=4)
    velocity = TorchCFMUNet(str(path), **SMALL)
    generator = FlowMatching(velocity, data_shape=[3, 32, 32], steps=2, ema_decay=0.9)
    assert all(torch.equal(generator.ema.module.unet.state_dict()[k], v) for k, v in ema.state_dict().items())

    class Brightness(nn.Module):
        def forward(self, x):
            return 5.0 * x.mean(dim=(1, 2, 3))

    module = CurationModule(generator, Brightness(), num_slots=8, num_candidates=4, preview_size=4, lr=1e-4)
    data = BlendingDataModule(CIFAR10(str(tmp_path / "cifar-10-batches-py")), batch_size=10)
    loop = RetrainingLoop(rounds=1, epochs_per_round=1, initial_epochs=1, seed=0, plots=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, callbacks=[loop], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert loop.complete
    # Round 1 trained on round 0's winners: 8 slots, each chosen among 4 candidates of the loaded model.
    winners = loop.store.read(0).tensors["x"]
    assert winners.shape == (8, 3, 32, 32) and torch.isfinite(winners).all()
    assert not torch.equal(winners[0], winners[1])
    trained = velocity.unet.state_dict()
    assert not all(torch.equal(trained[k], v) for k, v in ema.state_dict().items() if v.is_floating_point())
