"""The exact continuous learners (GaussianLearner, KDELearner) against exact oracles:
torch's moments, the Cholesky draw itself, scipy's gaussian_kde, and the console script."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from lightning_curate.models import GaussianLearner, KDELearner, bandwidth_factor, gaussian_moments, is_closed_form

REPO = Path(__file__).resolve().parents[2]


def _data(n=500, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return (torch.randn(n, dim, generator=gen, dtype=torch.float64) @ a.T + torch.arange(dim)).float()


def test_gaussian_fit_is_torchs_mean_and_ml_covariance():
    x = _data()
    model = GaussianLearner(dim=3)
    assert is_closed_form(model)
    model.fit(x)
    x64 = x.double()
    assert torch.allclose(model.mean, x64.mean(0), rtol=0, atol=1e-12)
    assert torch.allclose(model.cov, torch.cov(x64.T, correction=0), rtol=0, atol=1e-12)
    assert torch.allclose(model.scale_tril @ model.scale_tril.T, model.cov, rtol=0, atol=1e-12)
    assert int(model.fits) == 1
    # Its log-density and loss are torch's multivariate normal's.
    mvn = torch.distributions.MultivariateNormal(model.mean, model.cov)
    assert torch.allclose(model.log_prob(x), mvn.log_prob(x64), rtol=0, atol=1e-10)
    assert float(model.loss(x)) == pytest.approx(-float(mvn.log_prob(x64).mean()), rel=1e-6)
    # Weighted moments are those of the rows repeated by their integer weights.
    w = torch.randint(0, 4, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    mean_w, cov_w = gaussian_moments(x, w.double())
    rep = x64.repeat_interleave(w, dim=0)
    assert torch.allclose(mean_w, rep.mean(0), atol=1e-12)
    assert torch.allclose(cov_w, torch.cov(rep.T, correction=0), atol=1e-12)


def test_gaussian_samples_are_the_cholesky_draw_and_reproducible():
    model = GaussianLearner(dim=3)
    model.fit(_data())
    a = model.sample(64, generator=torch.Generator().manual_seed(7))
    b = model.sample(64, generator=torch.Generator().manual_seed(7))
    c = model.sample(64, generator=torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == (64, 3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(a, (model.mean + z @ model.scale_tril.T).float())
    assert model.sample(0).shape == (0, 3)


def test_gaussian_big_draw_has_the_fitted_moments_within_four_standard_errors():
    model = GaussianLearner(dim=3)
    model.fit(_data())
    n = 200_000
    x = model.sample(n, generator=torch.Generator().manual_seed(0)).double()
    mean_se = (model.cov.diagonal() / n).sqrt()
    assert float(((x.mean(0) - model.mean) / mean_se).abs().max()) < 4
    # Var of (x_i - m_i)(x_j - m_j) for a Gaussian: S_ii S_jj + S_ij^2.
    s = model.cov
    cov_se = ((s.diagonal()[:, None] * s.diagonal()[None, :] + s ** 2) / n).sqrt()
    assert float(((torch.cov(x.T, correction=0) - s) / cov_se).abs().max()) < 4


def test_gaussian_refuses_too_few_samples_and_a_singular_covariance_unless_ridged():
    model = GaussianLearner(dim=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="at least 2 samples"):
        model.fit(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"singular.*ridge > 0"):
        model.fit(_data(n=3))  # 3 points span a plane of R^3
    with pytest.raises(ValueError, match=r"x must be \[N, 3\]"):
        model.fit(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="ridge"):
        GaussianLearner(dim=2, ridge=-1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refusals change nothing
    ridged = GaussianLearner(dim=3, ridge=1e-3)
    x = _data(n=3)
    ridged.fit(x)
    expected = torch.cov(x.double().T, correction=0) + 1e-3 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(ridged.cov, expected, atol=1e-12)


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_kde_rule_bandwidths_are_scipys(rule):
    x = _data(n=400, dim=2)
    n, d = 400, 2
    formula = n ** (-1 / (d + 4)) if rule == "scott" else (n * (d + 2) / 4) ** (-1 / (d + 4))
    assert bandwidth_factor(rule, n, d) == pytest.approx(formula, rel=1e-15)
    model = KDELearner(dim=2, bandwidth=rule)
    model.fit(x)
    ref = stats.gaussian_kde(x.double().numpy().T, bw_method=rule)
    assert ref.factor == pytest.approx(formula, rel=1e-12)
    assert torch.allclose(model.kernel_cov, torch.as_tensor(ref.covariance), rtol=1e-10, atol=0)
    probe = _data(n=50, dim=2, seed=3)
    assert torch.allclose(model.log_prob(probe), torch.as_tensor(ref.logpdf(probe.double().numpy().T)),
                          rtol=0, atol=1e-9)


def test_kde_fixed_bandwidth_samples_are_a_stored_point_plus_kernel_noise():
    x = _data(n=50, dim=2)
    model = KDELearner(dim=2, bandwidth=0.3)
    assert is_closed_form(model)
    model.fit(x)
    assert torch.equal(model.kernel_cov, 0.09 * torch.eye(2, dtype=torch.float64))
    assert torch.equal(model.points, x)
    s = model.sample(1000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(s, model.sample(1000, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(s, model.sample(1000, generator=torch.Generator().manual_seed(6)))
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, 50, (1000,), generator=gen)
    z = torch.randn(1000, 2, generator=gen, dtype=torch.float64)
    assert torch.equal(s, (x[idx].double() + 0.3 * z).float())
    # A fixed bandwidth works on one point; a rule needs a covariance.
    KDELearner(dim=2, bandwidth=0.3).fit(x[:1])
    with pytest.raises(ValueError, match="at least 2 samples"):
        KDELearner(dim=2, bandwidth="scott").fit(x[:1])
    with pytest.raises(ValueError, match="singular.*fixed bandwidth"):
        KDELearner(dim=2, bandwidth="silverman").fit(torch.ones(5, 2))
    with pytest.raises(ValueError, match="bandwidth must be"):
        KDELearner(dim=2, bandwidth="wide")
    with pytest.raises(ValueError, match="bandwidth"):
        KDELearner(dim=2, bandwidth=0.0)


def test_kde_state_dict_carries_the_fitted_points_into_a_fresh_model():
    """A resumed run builds the model unfitted (one point) and loads the checkpoint's points."""
    model = KDELearner(dim=2, bandwidth="scott")
    model.fit(_data(n=77, dim=2))
    fresh = KDELearner(dim=2, bandwidth="scott")
    fresh.load_state_dict(model.state_dict())
    assert fresh.points.shape == (77, 2)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(fresh.sample(20, generator=gen), model.sample(20, generator=torch.Generator().manual_seed(0)))


def _tiny_overlay(path: Path, root: Path) -> Path:
    cfg = {"trainer": {"default_root_dir": str(root), "enable_progress_bar": False, "callbacks": [
        {"class_path": "lightning_curate.loop.RetrainingLoop",
         "init_args": {"rounds": 2, "epochs_per_round": 1, "initial_epochs": 1, "seed": 0, "plots": False}},
        {"class_path": "lightning_curate.loop.RoundCheckpoint",
         "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True, "save_top_k": 1}}]},
        "model": {"init_args": {"num_slots": 300}},
        "data": {"init_args": {"source": {"init_args": {"num_train": 600, "num_heldout": 400}}}}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ["mog8_gaussian", "mog8_kde"])
def test_console_script_runs_the_overlay_and_reports_fidelity(tmp_path, overlay):
    script = Path(sys.executable).with_name("lightning-curate")
    assert script.is_file(), "the console script is not installed (pip install -e .)"
    root = tmp_path / "run"
    tiny = _tiny_overlay(tmp_path / "tiny.yaml", root)
    proc = subprocess.run([str(script), "fit", "-c", str(REPO / "configs" / "mog8.yaml"),
                           "-c", str(REPO / "configs" / "overlays" / f"{overlay}.yaml"), "-c", str(tiny)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(root / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert int(rows[1]["n_synthetic"]) == 300
    assert "reward_fidelity" in rows[0] and "model_cov_trace" in rows[0]
    assert all(math.isfinite(float(r["reward_fidelity"])) for r in rows[1:])
    # Curation raised the reward, as with every generator.
    assert float(rows[2]["reward_mean"]) > float(rows[0]["reward_mean"])
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    fits = ckpt["state_dict"]["generator.fits"]
    assert int(fits) == 3  # one closed-form fit per round (rounds 0, 1, 2)


def test_gaussian_next_round_is_the_moment_projection_of_the_ideal_learners_law():
    """The module's claim: after a curated round the refitted Gaussian has the moments of the curated law,
    which the weights H of theory.empirical_curation_weights give exactly on the round's candidates."""
    from lightning_curate.data.toy2d import make_2d
    from lightning_curate.ops import kchoice
    from lightning_curate.rewards import ClippedDistanceReward
    from lightning_curate.theory import empirical_curation_weights

    model = GaussianLearner(dim=2)
    model.fit(make_2d("mog8", 4000, seed=0)[0])
    n, k, beta = 20000, 4, 1.0
    cands = model.sample(n * k, generator=torch.Generator().manual_seed(1))
    r = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5, gamma=1.0)(cands)
    kept = cands.view(n, k, 2)[torch.arange(n), kchoice(r.view(n, k), beta, seed=2).index]
    model.fit(kept)
    h = empirical_curation_weights(r, k, beta)
    mean_pred, cov_pred = gaussian_moments(cands, h)
    se = (cov_pred.diagonal() / n).sqrt()
    assert float(((model.mean - mean_pred) / se).abs().max()) < 4  # measured: 0.87
    # The move is real: the curated mean is many standard errors from the candidates' mean.
    assert float(((mean_pred - cands.double().mean(0)) / se).abs().max()) > 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", [GaussianLearner, KDELearner])
def test_cuda_samples_equal_the_cpu_samples_for_a_cpu_generator(cls):
    cpu = cls(dim=3)
    cpu.fit(_data())
    gpu = cls(dim=3).cuda()
    gpu.load_state_dict(cpu.state_dict())
    a = cpu.sample(100, generator=torch.Generator().manual_seed(0))
    b = gpu.sample(100, generator=torch.Generator().manual_seed(0))
    assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-5)
    c = gpu.sample(100, generator=torch.Generator(device="cuda").manual_seed(0), device="cpu")
    assert c.device.type == "cpu" and c.shape == (100, 3)
