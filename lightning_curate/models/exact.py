"""The exact learner: a categorical model over a finite set of atoms, fitted by exact maximum likelihood.

The ideal learner of the theory (``p_{t+1} = rho p_data + (1 - rho) q_t``,
docs/THEORY.md section 2) assumes that retraining recovers the law of the
training set exactly. A flow model only approximates that;
:class:`ExactCategorical` does it exactly, and it runs in the *same* loop,
DataModule and CLI as the flow model. A run of it is therefore the end-to-end
check of the whole pipeline (sampling, reward, ``kchoice``, the round store,
the blending DataModule) against the mathematics.

A sample is the *index* of an atom, stored as a float32 tensor of shape
``[n, 1]`` (``data_shape = (1,)``), so that the DataModule can concatenate real
and synthetic rows like any other data. Its data source is
:class:`lightning_curate.data.Atoms`, its reward
:class:`lightning_curate.rewards.AtomReward` (``configs/discrete.yaml``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from lightning_curate import theory
from lightning_curate.models.generator import Generator
from lightning_curate.theory.population import population_trajectory
from lightning_curate.utils.columns import EXACT_SHARE, IDEAL_SHARE
from lightning_curate.utils.validation import atom_indices, check_int

__all__ = ["ExactCategorical"]


class ExactCategorical(Generator):
    """A categorical distribution over ``num_atoms`` atoms whose training is exact maximum likelihood.

    A closed-form learner (:meth:`Generator.fit`): it has no trainable parameters, so the loop
    makes no optimizer and calls :meth:`fit` once per round with the round's whole training set,
    which sets the model to that set's empirical frequencies. The model after round ``t`` is
    therefore exactly the MLE of round ``t``'s data, whatever the batch size, the number of
    epochs, the step budget or the number of processes (every process fits the same full set).

    The model is stored as integer counts (``p = counts / counts.sum()``), in buffers, so
    checkpoints carry it and a resumed run continues exactly; being integers, precision plugins
    never round them.

    Args:
        num_atoms: number of atoms; the model starts uniform over them.

    Example:
        >>> import torch
        >>> model = ExactCategorical(num_atoms=3)
        >>> model.fit(torch.tensor([[0.0], [2.0], [2.0], [2.0]]))
        >>> model.probs.tolist()
        [0.25, 0.0, 0.75]
    """

    counts: Tensor
    fits: Tensor
    fidelity_hint = ("ExactCategorical is the exact learner: it reproduces its training set by construction, so "
                     "a shortfall here comes from sampling noise or the curation's settings (num_slots, "
                     "num_candidates), not from training; check the reward and the data source.")

    def __init__(self, num_atoms: int) -> None:
        super().__init__()
        self.num_atoms = check_int("num_atoms", num_atoms, minimum=1)
        self.data_shape = (1,)
        # The fitted model: p = counts / counts.sum(). Starts uniform.
        self.register_buffer("counts", torch.ones(num_atoms, dtype=torch.int64))
        # How many times the model was fitted (one per round in the loop).
        self.register_buffer("fits", torch.zeros((), dtype=torch.int64))

    @property
    def probs(self) -> Tensor:
        """The model's probabilities, float64 ``[num_atoms]``."""
        return self.counts.double() / self.counts.sum().double()

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the model to the empirical frequencies of the atoms ``x`` (float ``[N, 1]`` atom indices)."""
        idx = atom_indices(x, self.num_atoms, type(self).__name__)
        if idx.numel() == 0:
            raise ValueError(f"{type(self).__name__}.fit: the training set is empty")
        self.counts.copy_(torch.bincount(idx, minlength=self.num_atoms).to(self.counts))
        self.fits += 1

    def log_prob(self, x: Tensor) -> Tensor:
        """The model's log-probability of each atom of ``x`` (float ``[N, 1]`` atom indices), float64 ``[N]``.

        With respect to the counting measure; ``-inf`` for an atom the model gives no mass.

        Example:
            >>> model = ExactCategorical(num_atoms=2)
            >>> model.fit(torch.tensor([[0.0], [0.0], [0.0], [1.0]]))
            >>> model.log_prob(torch.tensor([[1.0], [0.0]])).exp().tolist()
            [0.25, 0.75]
        """
        idx = atom_indices(x, self.num_atoms, type(self).__name__)
        return self.probs.log()[idx.to(self.counts.device)].to(x.device)

    def loss(self, x: Tensor) -> Tensor:
        """The batch's mean negative log-likelihood under the current model (a score to log; nothing trains on it).

        Atoms the model gives no mass are floored at ``log(1e-12)``.
        """
        idx = atom_indices(x, self.num_atoms, type(self).__name__)
        p = self.probs
        nll = -torch.log(p[idx].clamp_min(1e-12)).mean() if idx.numel() else p.new_zeros(())
        return nll.float()

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """``n`` atom indices as float32 ``[n, 1]``, drawn by ``torch.multinomial`` with ``generator``.

        Draws happen on the generator's device (the CPU for the loop's seeded
        generators), so a seed gives the same atoms on every device.
        """
        check_int("n", n, minimum=0)
        device = torch.device(device) if device is not None else self.counts.device
        if n == 0:
            return torch.zeros(0, 1, device=device)
        draw_device = generator.device if generator is not None else self.counts.device
        p = (self.counts.double() / self.counts.sum().double()).to(draw_device)
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return idx.to(device=device, dtype=torch.float32).unsqueeze(1)

    def round_metrics(self, reward: nn.Module, source: nn.Module, *, beta: float, num_candidates: int,
                      real_fraction: float, round_idx: int, population: Optional[list] = None) -> dict[str, float]:
        """Exact quantities of round ``round_idx`` of this learner, for ``rounds.csv``.

        With a ``population`` (:class:`lightning_curate.theory.population.AtomCurator` s over these
        atoms) the ideal learner is the population's (:func:`~lightning_curate.theory.population.
        population_trajectory`) and the RLHF optimum, a one-reward notion, is left out.

        Returns ``{}`` unless ``reward`` has a per-atom table (``values``, e.g.
        :class:`~lightning_curate.rewards.AtomReward`) and ``source`` a ``p_data``
        (e.g. :class:`~lightning_curate.data.Atoms`), both over this model's atoms.
        Otherwise:

        * ``exact_share_<name>``: the model's probabilities ``p_t`` (not a sample estimate);
        * ``ideal_share_<name>``: the ideal-learner iteration from ``p_data`` after ``round_idx`` rounds;
        * ``kl_to_ideal``: ``KL(p_t || ideal_t)``;
        * ``kl_to_rlhf_optimum``: ``KL(p_t || p_data exp(t beta r) / Z)``, the optimum of
          ``E_p[r] - (1 / (t beta)) KL(p || p_data)`` (docs/THEORY.md section 5; ``p_data`` at ``t = 0``);
        * ``exact_reward_mean``, ``exact_exp_reward_mean``: ``E_{p_t}[r]`` and ``E_{p_t}[exp(beta r)]``.
        """
        values, p_data = getattr(reward, "values", None), getattr(source, "p_data", None)
        if not isinstance(values, Tensor) or not isinstance(p_data, Tensor):
            return {}
        n = self.num_atoms
        if values.numel() != n or p_data.numel() != n:
            return {}
        p_t = self.probs.cpu()
        r = values.cpu()
        if population is not None:
            ideal = population_trajectory(p_data.double(), population, real_fraction, rounds=round_idx)[-1]
        else:
            ideal = theory.retraining_trajectory(p_data, r, num_candidates, beta, real_fraction, rounds=round_idx)[-1]
        row = {"kl_to_ideal": theory.kl_divergence(p_t, ideal)}
        if population is None:
            row["kl_to_rlhf_optimum"] = theory.kl_divergence(p_t, theory.rlhf_optimum(p_data, r, beta, round_idx))
        row.update(exact_reward_mean=float((p_t * r).sum()),
                   exact_exp_reward_mean=theory.expected_exp_reward(p_t, r, beta))
        names = getattr(source, "class_names", None) or [f"atom{i}" for i in range(n)]
        for name, pe, pi in zip(names, p_t.tolist(), ideal.tolist()):
            row[EXACT_SHARE(name)] = pe
            row[IDEAL_SHARE(name)] = pi
        return row

    def extra_repr(self) -> str:
        """The number of atoms, for ``print(model)``."""
        return f"num_atoms={self.num_atoms}"
