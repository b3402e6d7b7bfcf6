"""Sample-selection bias (lightning_curate.experiments.field_selection_bias): the mixture's exact moments, the
models' exact moments, the local-reference selection's effect at fixed seeds on tiny sizes, and the rows."""

from __future__ import annotations

import pytest
import torch

from lightning_curate.experiments.field_selection_bias import (
    SB_VARIANTS,
    SelectionBiasSetting,
    dispersion_run,
    model_moments,
    selection_bias,
    skewed_mixture,
    skewed_mixture_moments,
)
from lightning_curate.models import GaussianLearner, KDELearner

TINY = dict(n=120, silo=16)


def test_mixture_moments_are_exact():
    setting = SelectionBiasSetting(seeds=[0], generations=1)
    mean, cov = skewed_mixture_moments(setting)
    x, mode = skewed_mixture(200000, setting, torch.Generator().manual_seed(0))
    assert torch.allclose(x.double().mean(0), mean, atol=0.02)
    assert torch.allclose(torch.cov(x.double().T), cov, atol=0.05)
    assert float((mode == 2).double().mean()) == pytest.approx(0.1, abs=0.003)


def test_model_moments_are_the_learners_laws():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    kde = KDELearner(dim=2, bandwidth=0.5)
    kde.fit(x)
    mean, cov = model_moments(kde)
    assert torch.allclose(cov, torch.cov(x.double().T, correction=0) + 0.25 * torch.eye(2, dtype=torch.float64))
    gauss = GaussianLearner(dim=2)
    gauss.fit(x)
    assert model_moments(gauss)[1] is gauss.cov
    with pytest.raises(TypeError, match="GaussianLearner or KDELearner"):
        model_moments(torch.nn.Linear(1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("learner", ["kde", "gaussian"])
def test_selection_shrinks_dispersion_and_replace_collapses(learner):
    setting = SelectionBiasSetting(seeds=[0], generations=6, **TINY)
    runs = {v: dispersion_run(learner, *v, setting, seed=0) for v in SB_VARIANTS}
    for workflow in ("replace", "accumulate"):
        assert runs[(workflow, True)]["ratio"][-1] < runs[(workflow, False)]["ratio"][-1]
    shrink = runs[("replace", True)]["ratio"]
    assert all(b < a for a, b in zip(shrink, shrink[1:]))  # every generation narrower (top-k of a Gaussian score)
    assert shrink[-1] < 0.01 and runs[("accumulate", True)]["ratio"][-1] > shrink[-1]
    assert runs[("replace", True)]["tail"][-1] == 0.0  # the tail mode is pruned
    # generation 0 is the same fit on the same real data for every variant
    assert len({runs[v]["ratio"][0] for v in SB_VARIANTS}) == 1


def test_rows_and_figure(tmp_path):
    setting = SelectionBiasSetting(seeds=[0, 1], generations=5, **TINY)
    result = selection_bias(tmp_path, setting=setting)
    assert [row.passed for row in result.rows] == [True, True, True, None] * 2
    assert "arXiv:2606.13732" in result.paper
    assert result.figures == [tmp_path / "selection_bias.png"] and result.figures[0].stat().st_size > 0


def test_a_collapse_to_a_point_reads_as_zero_dispersion_to_the_end():
    setting = SelectionBiasSetting(seeds=[0], generations=60, **TINY)
    run = dispersion_run("gaussian", "replace", True, setting, seed=0)
    assert len(run["ratio"]) == len(run["tail"]) == 61
    first = run["ratio"].index(0.0)  # no Gaussian fits the kept points: they are one point in float32
    assert 0 < first and all(r == 0.0 for r in run["ratio"][first:]) and run["ratio"][first - 1] < 1e-12
