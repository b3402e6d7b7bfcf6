"""Bradley-Terry reward fitting from choice logs, by maximum likelihood.

A choice log is what a curation platform records: for each of ``n`` slots the
``K`` candidates shown, ``candidates [n, K, ...]``, and the index of the kept
one, ``chosen [n]`` (or the ``m`` kept ones in choice order, ``[n, m]``:
Plackett-Luce). A reward model ``r_theta`` (any ``nn.Module`` mapping a batch
``[N, ...]`` to ``N`` scores) is fitted by minimising

    -log softmax(r_theta(x_1..x_K))_chosen        (Plackett-Luce: summed over the m picks)

When the choices are Bradley-Terry with ``P(k) = softmax(beta r)_k``, the fit
estimates ``beta r`` up to an additive constant: only score differences enter
the likelihood, and ``beta`` and ``r`` enter only as their product.

Example:
    >>> cands = torch.tensor([[[0.0], [1.0]]] * 8)        # 8 slots, atoms 0 and 1
    >>> fit = fit_bradley_terry(cands, torch.tensor([1, 1, 1, 0] * 2), AtomScores(2), max_epochs=300,
    ...                         lr=0.1, val_fraction=0.0)
    >>> round(float((fit.model.scores[1] - fit.model.scores[0]).detach()), 2)  # log 3
    1.1
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_curate.utils.validation import atom_indices, check_float, check_int

__all__ = ["AtomScores", "BTFit", "RewardMLP", "bradley_terry_loss", "fit_bradley_terry", "score_candidates"]


class RewardMLP(nn.Module):
    """A small MLP reward ``[N, *s] -> [N]`` for low-dimensional samples (e.g. 2-D points).

    Example:
        >>> RewardMLP(2, hidden=16, depth=2)(torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(self, in_features: int = 2, hidden: int = 64, depth: int = 2):
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.depth = check_int("depth", depth, minimum=1)
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``[N]`` of a batch ``[N, *s]``."""
        return self.net(x.reshape(x.shape[0], -1).float()).squeeze(-1)


class AtomScores(nn.Module):
    """One free score per atom of a finite support; samples are atom indices ``[N, 1]``.

    The exact-learner setting: the MLE of these scores is the best Bradley-Terry
    fit of the choices, with nothing lost to the architecture.
    """

    def __init__(self, num_atoms: int):
        super().__init__()
        self.num_atoms = check_int("num_atoms", num_atoms, minimum=1)
        self.scores = nn.Parameter(torch.zeros(num_atoms))

    def forward(self, x: Tensor) -> Tensor:
        """Scores ``[N]`` of atom indices ``[N, 1]``."""
        return self.scores[atom_indices(x, self.num_atoms, "AtomScores")]


def score_candidates(model: nn.Module, candidates: Tensor) -> Tensor:
    """``model`` applied to every candidate of ``[n, K, ...]``: scores ``[n, K]``."""
    n, k = candidates.shape[:2]
    out = model(candidates.reshape(n * k, *candidates.shape[2:]))
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (n * k,):
        raise ValueError(f"the reward model must map a batch of {n * k} samples to {n * k} scores, "
                         f"got shape {tuple(out.shape)}")
    return out.reshape(n, k)


def bradley_terry_loss(scores: Tensor, chosen: Tensor) -> Tensor:
    """Mean negative log-likelihood of the choices: ``scores [n, K]``, ``chosen [n]`` or ``[n, m]``.

    With ``m`` winners (Plackett-Luce), pick ``j`` is a softmax over the candidates
    not picked before it.

    Example:
        >>> round(float(bradley_terry_loss(torch.zeros(1, 4), torch.tensor([2]))), 4)  # log 4
        1.3863
    """
    picks = chosen[:, None] if chosen.dim() == 1 else chosen
    log_lik = scores.new_zeros(scores.shape[0])
    masked = scores
    for j in range(picks.shape[1]):
        idx = picks[:, j:j + 1]
        log_lik = log_lik + masked.gather(1, idx)[:, 0] - torch.logsumexp(masked, dim=1)
        masked = masked.scatter(1, idx, -math.inf)
    return -log_lik.mean()


def _check_logs(candidates: Tensor, chosen: Tensor) -> Tensor:
    if not isinstance(candidates, Tensor) or candidates.dim() < 2:
        raise ValueError(f"candidates must be a tensor of shape [n, K, ...], got "
                         f"{tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__}")
    n, k = candidates.shape[:2]
    if not isinstance(chosen, Tensor) or chosen.dim() not in (1, 2) or chosen.shape[0] != n:
        raise ValueError(f"chosen must be a tensor of shape [n] or [n, m] with n = {n}, got "
                         f"{tuple(chosen.shape) if isinstance(chosen, Tensor) else type(chosen).__name__}")
    if chosen.is_floating_point():
        raise ValueError(f"chosen must hold integer indices, got dtype {chosen.dtype}")
    chosen = chosen.long()
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= k):
        raise ValueError(f"chosen indices must be in 0..{k - 1} (K = {k}), "
                         f"got {int(chosen.min())}..{int(chosen.max())}")
    if chosen.dim() == 2 and chosen.shape[1] > 1:
        srt = chosen.sort(dim=1).values
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("chosen: a slot picks the same candidate twice (Plackett-Luce picks are distinct)")
    return chosen


@dataclass
class BTFit:
    """Result of :func:`fit_bradley_terry`.

    model: the fitted reward (best validation epoch), in eval mode.
    train_index / val_index: the slots of each split.
    history: ``(train_nll, val_nll)`` per epoch (``val_nll`` is ``nan`` without a split).
    best_epoch: the epoch whose weights were kept.
    val_nll: its validation NLL per slot (train NLL without a split).
    """

    model: nn.Module
    train_index: Tensor
    val_index: Tensor
    history: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: int = 0
    val_nll: float = math.nan


def fit_bradley_terry(candidates: Tensor, chosen: Tensor, model: Optional[nn.Module] = None, *, seed: int = 0,
                      val_fraction: float = 0.2, max_epochs: int = 200, batch_size: int = 512, lr: float = 3e-3,
                      weight_decay: float = 0.0, patience: int = 20) -> BTFit:
    """Fit a Bradley-Terry (Plackett-Luce) reward by maximum likelihood, with early stopping.

    Args:
        candidates: ``[n, K, ...]`` the candidates of each slot.
        chosen: ``[n]`` kept index per slot, or ``[n, m]`` kept indices in choice order.
        model: ``nn.Module`` mapping ``[N, ...]`` to ``[N]`` scores (trained in place);
            default a :class:`RewardMLP` for vector samples ``[n, K, D]``.
        seed: seeds the split, the initialisation (default model) and the batch order;
            the same inputs and seed give the same fit.
        val_fraction: share of slots held out; training stops after ``patience`` epochs
            without a better held-out NLL and the best epoch's weights are kept.
            ``0``: no split, all ``max_epochs`` epochs.
        max_epochs, batch_size, lr, weight_decay: Adam settings.
    """
    chosen = _check_logs(candidates, chosen)
    seed = check_int("seed", seed)
    val_fraction = check_float("val_fraction", val_fraction, minimum=0.0, maximum=0.9)
    max_epochs = check_int("max_epochs", max_epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    patience = check_int("patience", patience, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict_minimum=True)
    n = candidates.shape[0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
    if val_fraction > 0 and not 1 <= n_val < n:
        raise ValueError(f"val_fraction={val_fraction} leaves no slot for training or validation with n = {n}")
    val_index, train_index = perm[:n_val].sort().values, perm[n_val:].sort().values
    if model is None:
        if candidates.dim() != 3:
            raise ValueError("the default RewardMLP needs vector samples [n, K, D]; pass a model for images "
                             "(e.g. preference.cli.build_model('cnn', shape)[0]), got candidates of shape "
                             f"{tuple(candidates.shape)}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = RewardMLP(candidates.shape[2])
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module mapping [N, ...] to [N] scores, got {type(model).__name__}")
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def nll(index: Tensor) -> float:
        model.eval()
        with torch.no_grad():
            total = sum(float(bradley_terry_loss(score_candidates(model, candidates[b]), chosen[b])) * b.numel()
                        for b in index.split(4096))
        return total / max(index.numel(), 1)

    history: list[tuple[float, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(max_epochs):
        model.train()
        order = train_index[torch.randperm(train_index.numel(), generator=gen)]
        total = 0.0
        for batch in order.split(batch_size):
            loss = bradley_terry_loss(score_candidates(model, candidates[batch]), chosen[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * batch.numel()
        train_nll = total / train_index.numel()
        val_nll = nll(val_index) if n_val else math.nan
        history.append((train_nll, val_nll))
        if n_val:
            if val_nll < best - 1e-7:
                best, best_epoch, best_state, stale = val_nll, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    if n_val:
        model.load_state_dict(best_state)
    else:
        best, best_epoch = nll(train_index), max_epochs - 1
    model.eval()
    return BTFit(model, train_index, val_index, history, best_epoch, best)
