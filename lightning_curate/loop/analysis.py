"""Analysis and prediction: what a round's row says beyond its own samples.

After a round is curated, rank 0 adds to its row what needs the real data or the
rows before it:

* the distance of the model's preview samples to held-out real data (``sw_distance``
  and the data source's own sample metrics);
* what the ideal learner predicts for the next round (``predicted_*``, ``tilt_*``,
  :mod:`lightning_curate.theory.ideal_learner`; a population's mixture law,
  :func:`~lightning_curate.loop.prediction.predict_next`), and docs/THEORY.md 4.2's
  monotone-improvement check against the previous round's bound;
* the learner's gap to the set it trained on, round 0's fit of the data, and the fidelity
  of this round's move to the previous round's prediction (:mod:`lightning_curate.loop.fidelity`);
* an exact learner's exact quantities (:func:`~lightning_curate.loop.prediction.exact_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_curate.loop.fidelity import fidelity_columns, learner_gap_columns, p0_quality
from lightning_curate.loop.prediction import PopulationForecast, exact_metrics, predict_next
from lightning_curate.theory.ideal_learner import check_improvement, run_level_z
from lightning_curate.utils.columns import Col

__all__ = ["RoundAnalysis"]


class RoundAnalysis:
    """Adds the analysis and prediction columns to a round's row (rank 0 only).

    It keeps the real training data's rewards and labels, scored once, for the predictions.

    Args:
        learner_noise: the learner's refit jitter, as a multiple of a round mean's sampling
            standard error (see :class:`~lightning_curate.loop.RetrainingLoop`).
        rounds: the run's rounds: the improvement check's threshold holds for the whole run
            (:func:`~lightning_curate.theory.ideal_learner.run_level_z`).
    """

    def __init__(self, learner_noise: float = 0.0, rounds: int = 1) -> None:
        self.learner_noise = learner_noise
        self.rounds = rounds
        self.real_rewards: Optional[Tensor] = None  # the real training data's, for predictions
        self.real_labels: Optional[Tensor] = None
        self.forecast = PopulationForecast()  # a population's caches, kept between rounds

    def measure(self, pl_module: Any, datamodule: Any, round_idx: int, row: dict[str, Any],
                probe: dict[str, Tensor], previous: Optional[Mapping[str, Any]]) -> None:
        """Add the columns to ``row`` (round ``round_idx``'s), from its ``probe`` (the merged preview
        and probe tensors of the store) and the ``previous`` round's row (``None`` for round 0)."""
        preview = probe.get("preview")
        if preview is not None:
            row[Col.SW_DISTANCE] = pl_module.sample_distance(preview, datamodule.real.heldout)
            row.update(datamodule.source.sample_metrics(preview, datamodule.real.heldout))
        if "probe_rewards" in probe:
            row.update(self.theory_columns(pl_module, datamodule, round_idx, probe, previous))
        row.update(self.fidelity_columns(pl_module, datamodule, round_idx, row, preview, previous))
        # Exact quantities (KL to the ideal learner and to the RLHF optimum) for the exact learner.
        row.update(exact_metrics(pl_module, datamodule.source, datamodule.real_fraction, round_idx))

    def theory_columns(self, pl_module: Any, datamodule: Any, round_idx: int, probe: dict[str, Tensor],
                       previous: Optional[Mapping[str, Any]]) -> dict[str, float]:
        """What an ideal learner would make of this round (``predicted_*``, ``tilt_*``), and
        docs/THEORY.md 4.2's monotone-improvement check against the previous round's bound.
        """
        if datamodule.policy != "replace":  # the ideal learner's laws here are replace's: none rather than wrong
            return {}
        real = datamodule.real.train
        if self.real_rewards is None:
            self.real_rewards = pl_module.score(real.to(pl_module.device), round_idx).cpu()
            labels = datamodule.label(real) if datamodule.class_names else None
            self.real_labels = labels.cpu() if labels is not None else None
        columns = predict_next(pl_module, probe, class_names=datamodule.class_names,
                               real_fraction=datamodule.real_fraction, real_rewards=self.real_rewards,
                               real_labels=self.real_labels, real_samples=real, round_idx=round_idx,
                               forecast=self.forecast)
        if previous is not None:
            columns.update(check_improvement(previous, columns, z=run_level_z(self.rounds),
                                             learner_noise=self.learner_noise))
            if columns.get(Col.IMPROVEMENT_VIOLATION) == 1.0:
                rank_zero_warn(f"round {round_idx}: E[exp(beta r)] = {columns[Col.EXP_REWARD_MEAN]:.4g} is below "
                               f"the ideal learner's lower bound {previous[Col.EXP_REWARD_LOWER_BOUND]:.4g} "
                               "(docs/THEORY.md 4.2): the generator may be under-trained")
        return columns

    def fidelity_columns(self, pl_module: Any, datamodule: Any, round_idx: int, row: Mapping[str, Any],
                         preview: Optional[Tensor], previous: Optional[Mapping[str, Any]]) -> dict[str, float]:
        """The gap to the round's own training set, then round 0's fit of the data or the fidelity to the
        previous round's prediction."""
        k = pl_module.num_candidates
        n_slots = pl_module.slots_of_round(round_idx) if hasattr(pl_module, "slots_of_round") else pl_module.num_slots
        if round_idx == 0 and self.real_rewards is not None:  # round 0 trained on the real data
            trained_on = self.real_rewards.double().mean().item()
        else:
            trained_on = pl_module.mean_score(datamodule.dataset_for_round(round_idx).tensors[0], round_idx)
        columns = learner_gap_columns(row, float(trained_on), num_candidates=n_slots * k)
        if round_idx == 0:
            columns.update(p0_quality(row, preview, datamodule.real, self.real_labels, datamodule.class_names,
                                      pl_module.sample_distance))
        elif previous is not None:
            probe = min(pl_module.preview_size, n_slots) * k
            columns.update(fidelity_columns(previous, row, num_candidates=n_slots * k,
                                            num_probe=probe or None, learner_noise=self.learner_noise))
        return columns
