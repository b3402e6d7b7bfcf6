"""The exact learner: a categorical model over a finite set of atoms, fitted by exact maximum likelihood.

THEORY.md's ideal learner (``p_{t+1} = rho p_data + (1 - rho) q_t``) assumes
that retraining recovers the law of the training set exactly. A flow model only
approximates that; :class:`ExactCategorical` does it exactly, and it runs in the
*same* loop, DataModule and CLI as the flow model. A run of it is therefore the
end-to-end check of the whole pipeline (sampling, reward, ``kchoice``, the round
store, the blending DataModule) against the mathematics.

Data representation: a sample is the *index* of an atom, stored as a float32
tensor of shape ``[n, 1]`` (``data_shape = (1,)``), so that the DataModule can
concatenate real and synthetic rows like any other data. Indices are exact in
float32 up to 2**24 atoms.

Three pieces, each usable by class path in a config (``configs/discrete.yaml``):

* :class:`ExactCategorical`: the generator (``Generator`` interface);
* :class:`Atoms`: the real data, atom indices drawn from ``p_data`` with exactly
  proportional counts, labelled by atom (``share_<name>`` columns are the atom
  shares);
* :class:`AtomReward`: a reward per atom.

:func:`round_metrics` gives the exact quantities of a round of this learner (its
probabilities, the KL to the RLHF optimum of THEORY.md 4.1, the ideal iteration)
for a loop that wants to log them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_curate import theory
from lightning_curate.generators import Generator
from lightning_curate.rewards import RewardModel
from lightning_curate.seeding import derive_seed, generator as make_generator
from lightning_curate.sources import DataSource, RealData

__all__ = ["ExactCategorical", "Atoms", "AtomReward", "atom_indices", "proportional_counts", "round_metrics",
           "two_level_band"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def atom_indices(x: Tensor, num_atoms: int, who: str) -> Tensor:
    """The int64 atom indices ``[n]`` of a batch ``x`` of shape ``[n, 1]`` (or ``[n]``), checked."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a tensor of atom indices of shape [n, 1], got {type(x).__name__}")
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.dim() != 1:
        raise ValueError(f"{who} expects atom indices of shape [n, 1], got shape {tuple(x.shape)}")
    if x.is_floating_point():
        idx = x.round()
        if x.numel() and not torch.equal(idx, x):
            raise ValueError(f"{who}: atom indices must be whole numbers, got e.g. {float(x[idx != x][0])}")
        idx = idx.long()
    else:
        idx = x.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_atoms):
        raise ValueError(f"{who}: atom indices must be in 0..{num_atoms - 1}, got values in "
                         f"{int(idx.min())}..{int(idx.max())}")
    return idx


class ExactCategorical(Generator):
    """A categorical distribution over ``num_atoms`` atoms whose training is exact maximum likelihood.

    ``loss(x)`` counts the atoms of every training batch (in training mode only);
    the next call to :meth:`sample` (or :meth:`finish_round`) sets the model to
    the empirical frequencies of everything counted since the previous one. In
    the retraining loop each epoch covers the round's training set exactly once
    (the DataModule's sampler), and the round's first ``sample`` comes at the
    round's end, so the model after round ``t`` is exactly the MLE of round
    ``t``'s data. With several epochs per round the counts are multiples of one
    epoch's, so the frequencies are the same. (``limit_train_batches < 1``
    breaks that: the model then fits the batches it saw.)

    The model is stored as integer counts (``p = counts / counts.sum()``), in
    buffers, so checkpoints carry it and a resumed run continues exactly; being
    integers, precision plugins never round them. A zero-valued dummy parameter
    gives the optimizer something to hold; its gradient is 0, so it never moves.

    Under DDP each training step sums its batch counts over the ranks (every rank
    runs the same number of steps), so every rank holds the same model and may
    sample any number of times. The DistributedSampler pads a round that does not
    divide by the world size by repeating a few samples, which the counts then
    include.

    Args:
        num_atoms: number of atoms; the model starts uniform over them.
    """

    def __init__(self, num_atoms: int) -> None:
        super().__init__()
        self.num_atoms = _positive_int("num_atoms", num_atoms)
        self.data_shape = (1,)
        # The fitted model: p = counts / counts.sum(). Starts uniform.
        self.register_buffer("counts", torch.ones(num_atoms, dtype=torch.int64))
        # Atoms seen in training since the last fit.
        self.register_buffer("pending", torch.zeros(num_atoms, dtype=torch.int64))
        # How many times the model was refitted (one per round in the loop).
        self.register_buffer("fits", torch.zeros((), dtype=torch.int64))
        self.dummy = nn.Parameter(torch.zeros(()))

    @property
    def probs(self) -> Tensor:
        """The model's probabilities, float64 ``[num_atoms]`` (after folding in pending counts)."""
        self.finish_round()
        return self.counts.double() / self.counts.sum().double()

    def loss(self, x: Tensor) -> Tensor:
        """Counts the batch (in training mode) and returns its mean negative log-likelihood under
        the current model (floored at ``log(1e-12)`` for atoms the model gives no mass), with a
        gradient path through the dummy parameter only."""
        idx = atom_indices(x, self.num_atoms, type(self).__name__)
        if self.training:
            with torch.no_grad():
                batch_counts = torch.bincount(idx, minlength=self.num_atoms).to(self.pending)
                if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                    # Every rank runs the same number of steps (the DistributedSampler
                    # gives equal shards), so this collective is symmetric.
                    dist.all_reduce(batch_counts)
                self.pending += batch_counts
        p = self.counts.double() / self.counts.sum().double()
        nll = -torch.log(p[idx].clamp_min(1e-12)).mean() if idx.numel() else p.new_zeros(())
        return nll.to(self.dummy.dtype) + 0.0 * self.dummy

    @torch.no_grad()
    def finish_round(self) -> bool:
        """Refit the model to the atoms counted since the last fit; returns whether it changed.

        :meth:`sample` calls it first, so the loop needs no extra hook. Idempotent:
        with nothing counted it does nothing.
        """
        if int(self.pending.sum()) == 0:
            return False
        self.counts.copy_(self.pending)
        self.pending.zero_()
        self.fits += 1
        return True

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """``n`` atom indices as float32 ``[n, 1]``, drawn by ``torch.multinomial`` with ``generator``.

        Draws happen on the generator's device (the CPU for the loop's seeded
        generators), so a seed gives the same atoms on every device.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        self.finish_round()
        device = torch.device(device) if device is not None else self.counts.device
        if n == 0:
            return torch.zeros(0, 1, device=device)
        draw_device = generator.device if generator is not None else self.counts.device
        p = (self.counts.double() / self.counts.sum().double()).to(draw_device)
        idx = torch.multinomial(p, n, replacement=True, generator=generator)
        return idx.to(device=device, dtype=torch.float32).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"num_atoms={self.num_atoms}"


def proportional_counts(probs: Sequence[float] | Tensor, n: int) -> Tensor:
    """Counts ``[len(probs)]`` summing to ``n``, as close to ``n * probs`` as integers allow.

    Largest-remainder rounding (ties to the lower index): exact whenever
    ``n * probs`` are whole numbers.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    exact = p * n
    counts = torch.floor(exact + 1e-9).long()
    left = n - int(counts.sum())
    if left > 0:
        remainder = exact - counts.double()
        order = sorted(range(len(p)), key=lambda i: (-float(remainder[i]), i))
        for i in order[:left]:
            counts[i] += 1
    elif left < 0:  # floating error only
        for i in sorted(range(len(p)), key=lambda i: -int(counts[i]))[: -left]:
            counts[i] -= 1
    return counts


class Atoms(DataSource):
    """Real data on a finite set of atoms: ``p_data = probs``.

    The training set holds exactly proportional counts of every atom (see
    :func:`proportional_counts`), in a seeded random order, so the model of
    round 0 is ``p_data`` itself whenever ``num_train * probs`` are whole
    numbers. ``label(x)`` is the atom index; ``class_names`` (``names``, default
    ``atom0, atom1, ...``) name the ``share_<name>`` columns.

    Args:
        probs: ``p_data``, non-negative, summing to 1.
        num_train: real training samples.
        num_heldout: held-out samples (the same proportions, another order).
        seed: seeds the order of the samples.
        names: one name per atom.
    """

    def __init__(self, probs: list[float], num_train: int = 20000, num_heldout: int = 2000, seed: int = 0,
                 names: Optional[list[str]] = None) -> None:
        super().__init__()
        try:
            p = torch.as_tensor([float(v) for v in probs], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"probs must be a list of numbers, got {probs!r}") from err
        if p.numel() == 0:
            raise ValueError("probs must not be empty")
        if not torch.isfinite(p).all() or (p < 0).any():
            raise ValueError(f"probs must be finite and >= 0, got {probs!r}")
        if abs(float(p.sum()) - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {float(p.sum())}")
        self.num_train = _positive_int("num_train", num_train)
        self.num_heldout = _positive_int("num_heldout", num_heldout)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != p.numel():
                raise ValueError(f"names must give one name per atom ({p.numel()}), got {len(names)}")
            if len(set(names)) != len(names):
                raise ValueError(f"names must be distinct, got {names}")
        self.p_data = p / p.sum()
        self.seed = seed
        self.class_names = names if names is not None else [f"atom{i}" for i in range(p.numel())]

    @property
    def num_atoms(self) -> int:
        return self.p_data.numel()

    def _draw(self, n: int, tag: str) -> tuple[Tensor, Tensor]:
        counts = proportional_counts(self.p_data, n)
        idx = torch.repeat_interleave(torch.arange(self.num_atoms), counts)
        idx = idx[torch.randperm(n, generator=make_generator(derive_seed(self.seed, "atoms", tag)))]
        return idx.float().unsqueeze(1), idx

    def load(self) -> RealData:
        x, y = self._draw(self.num_train, "train")
        hx, hy = self._draw(self.num_heldout, "heldout")
        return RealData(train=x, heldout=hx, train_labels=y, heldout_labels=hy)

    def label(self, x: Tensor) -> Tensor:
        return atom_indices(x, self.num_atoms, type(self).__name__)

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """KL and total variation from the empirical law of ``samples`` to ``p_data``."""
        idx = self.label(samples).cpu()
        if idx.numel() == 0:
            return {}
        p_hat = torch.bincount(idx, minlength=self.num_atoms).double() / idx.numel()
        return {"kl_to_data": theory.kl_divergence(p_hat, self.p_data),
                "tv_to_data": 0.5 * float((p_hat - self.p_data).abs().sum())}


class AtomReward(RewardModel):
    """``r(x) = gamma * rewards[x]`` for atom indices ``x`` of shape ``[n, 1]``.

    THEORY.md's second worked example is ``rewards = [1, 0, ..., 0]``,
    ``gamma = 5`` (a perfect classifier's class-0 probability, scaled).
    """

    def __init__(self, rewards: list[float], gamma: float = 1.0) -> None:
        super().__init__(gamma)
        try:
            table = torch.as_tensor([float(v) for v in rewards], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"rewards must be a list of numbers, got {rewards!r}") from err
        if table.numel() == 0 or not torch.isfinite(table).all():
            raise ValueError(f"rewards must be a non-empty list of finite numbers, got {rewards!r}")
        self.register_buffer("table", table, persistent=False)

    @property
    def values(self) -> Tensor:
        """The reward of every atom, ``gamma * rewards``, float64."""
        return self.gamma * self.table.double()

    def score(self, x: Tensor) -> Tensor:
        return self.table[atom_indices(x, self.table.numel(), type(self).__name__).to(self.table.device)]

    def extra_repr(self) -> str:
        return f"num_atoms={self.table.numel()}, gamma={self.gamma}"


def round_metrics(generator: nn.Module, reward: nn.Module, source: DataSource, *, beta: float,
                  num_candidates: int, real_fraction: float, round_idx: int) -> dict[str, float]:
    """Exact quantities of round ``round_idx`` of the exact learner, for ``rounds.csv``.

    Returns ``{}`` unless ``generator`` is an :class:`ExactCategorical`, ``reward`` an
    :class:`AtomReward` and ``source`` :class:`Atoms` (with the same number of atoms).
    Otherwise:

    * ``exact_share_<name>``: the model's probabilities ``p_t`` (not a sample estimate);
    * ``ideal_share_<name>``: THEORY.md's iteration from ``p_data`` after ``round_idx`` rounds;
    * ``kl_to_ideal``: ``KL(p_t || ideal_t)``;
    * ``kl_to_rlhf_optimum``: ``KL(p_t || p_data exp(t beta r) / Z)``, the optimum of
      ``E_p[r] - (1 / (t beta)) KL(p || p_data)`` (THEORY.md 4.1; ``p_data`` at ``t = 0``);
    * ``exact_reward_mean``, ``exact_exp_reward_mean``: ``E_{p_t}[r]`` and ``E_{p_t}[exp(beta r)]``.

    Call it after the round's sampling (or anywhere: it refits pending counts first).
    """
    if not (isinstance(generator, ExactCategorical) and isinstance(reward, AtomReward)
            and isinstance(source, Atoms)):
        return {}
    n = generator.num_atoms
    if reward.table.numel() != n or source.num_atoms != n:
        return {}
    p_t = generator.probs.cpu()
    r = reward.values.cpu()
    p_data = source.p_data
    ideal = theory.retraining_trajectory(p_data, r, num_candidates, beta, real_fraction, rounds=round_idx)[-1]
    optimum = theory.rlhf_optimum(p_data, r, beta, round_idx)
    row = {"kl_to_ideal": theory.kl_divergence(p_t, ideal), "kl_to_rlhf_optimum": theory.kl_divergence(p_t, optimum),
           "exact_reward_mean": float((p_t * r).sum()),
           "exact_exp_reward_mean": theory.expected_exp_reward(p_t, r, beta)}
    for name, pe, pi in zip(source.class_names, p_t.tolist(), ideal.tolist()):
        row[f"exact_share_{name}"] = pe
        row[f"ideal_share_{name}"] = pi
    return row


def two_level_band(top_share: float, reward_top: float, reward_rest: float, num_candidates: int,
                   beta: float = 1.0, real_fraction: float = 0.0, rounds: int = 10,
                   num_slots: int = 20000) -> tuple[list[float], list[float]]:
    """THEORY.md's ideal trajectory of a top level's share, and how far a run of the exact learner
    may stray from it by sampling noise alone.

    For a reward with two values (``reward_top`` on a set of ``p_data`` mass ``top_share``),
    the share ``s_t`` of the top set follows ``s_{t+1} = rho top_share + (1 - rho) q(s_t)``
    (:func:`lightning_curate.theory.curated_share_map`). A run with ``num_slots`` slots keeps
    ``N`` winners, a binomial draw of ``q(s_t)``, and its ``share_<top>`` column counts
    ``N K`` candidates of ``s_t``. Returns ``(ideal, se)``, one value per round ``0..rounds``:
    the ideal shares and the standard error of a run's ``share_<top>`` around them, with
    the winners' noise of every earlier round propagated through the map (to first order).
    """
    K, rho, n = num_candidates, real_fraction, num_slots
    ideal, var = [top_share], [0.0]
    s, v = top_share, 0.0
    for _ in range(rounds):
        h = 1e-6
        lo, hi = max(s - h, 0.0), min(s + h, 1.0)
        step = lambda x: theory.curated_share_map(x, reward_top, reward_rest, K, beta, rho, top_share)  # noqa: E731
        slope = (step(hi) - step(lo)) / (hi - lo)
        q = theory.curated_share_map(s, reward_top, reward_rest, K, beta)
        v = slope**2 * v + (1 - rho) ** 2 * q * (1 - q) / n
        s = step(s)
        ideal.append(s)
        var.append(v)
    se = [math.sqrt(vt + st * (1 - st) / (n * K)) for st, vt in zip(ideal, var)]
    return ideal, se
