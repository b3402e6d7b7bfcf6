"""A population of curators in the loop: who curates each slot, and how.

``CurationModule(curators=[...])`` replaces the one curator (its ``reward``,
``beta``, ``mode``) by a list of :class:`Curator` s. Each slot is curated by
one curator drawn with probability ``pi_u`` (its normalised ``weight``). The
draw of block ``b`` of a round depends on (round seed, ``b``) only, like the
candidates, so chunk size, ranks and resume never change it. The module's own
``reward`` stays the reference (the honest reward): ``reward_mean``, the
stored ``rewards`` and the plots measure it; each curator's reward is reported
beside it (``reward_mean_<name>``).

The kept samples follow the mixture ``q = sum_u pi_u p H_u``
(:mod:`lightning_curate.theory.population`); what the ideal learner predicts from
it is :mod:`lightning_curate.loop.prediction`'s.

Example (YAML, an honest majority and a 25% adversary wanting mode 4)::

    curators:
      - class_path: lightning_curate.loop.Curator
        init_args:
          name: honest
          weight: 0.75
          reward: {class_path: lightning_curate.rewards.ClippedDistanceReward,
                   init_args: {dataset: mog8, targets: [0, 1]}}
      - class_path: lightning_curate.loop.Curator
        init_args:
          name: adversary
          weight: 0.25
          reward: {class_path: lightning_curate.rewards.ClippedDistanceReward,
                   init_args: {dataset: mog8, targets: [4]}}
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Optional, Sequence, cast

import torch
from torch import Tensor, nn

from lightning_curate.ops.kchoice import kchoice
from lightning_curate.store.settings import init_args_of, qualname
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator
from lightning_curate.utils.validation import MODES, check_beta, check_beta_spread, check_choice, check_float

__all__ = ["Curator", "check_population", "choice_log_weights", "choose_block", "curator_settings", "draw_curators",
           "describe_module", "members", "population_shares", "same_reward"]

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class Curator(nn.Module):
    """One kind of curator in the loop: its own reward model, temperature, choice rule and weight.

    Args:
        reward: any ``nn.Module`` mapping a batch ``[n, ...]`` to rewards ``[n]``; frozen.
        beta: inverse temperature of its Bradley-Terry choice.
        mode: ``softmax``, ``argmax`` or ``uniform`` (as ``kchoice``).
        weight: unnormalised population weight (``pi_u = weight / sum of weights``).
        name: its column suffix in ``rounds.csv`` (letters, digits, ``_``; default ``curator<i>``).
        share: a fixed fraction of the slots instead of a weight (e.g. the adversaries' ``epsilon``);
            the curators without a share split the rest by weight. A sweep sets one number.
    """

    reward: nn.Module
    beta: float
    mode: str
    weight: float
    name: str
    share: Optional[float]

    def __init__(self, reward: nn.Module, beta: float = 1.0, mode: str = "softmax", weight: float = 1.0,
                 name: str = "", share: Optional[float] = None):
        super().__init__()
        label = f"Curator {name!r}" if name else "Curator"  # errors say which entry of a YAML list is wrong
        if not isinstance(reward, nn.Module):
            raise TypeError(f"{label}: reward must be an nn.Module, got {type(reward).__name__}")
        if name and not _NAME.match(name):
            raise ValueError(f"Curator name must hold only letters, digits and '_' (it names columns), got {name!r}")
        try:
            self.beta = check_beta(beta)
            self.mode = check_choice("mode", mode, MODES)
            self.weight = check_float("weight", weight, minimum=0.0)
            self.share = None if share is None else check_float("share", share, minimum=0.0, maximum=1.0)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{label}: {err}") from None
        self.reward = reward.requires_grad_(False).eval()
        self.name = name

    def extra_repr(self) -> str:
        """Its settings, for ``print(module)``."""
        return f"name={self.name!r}, beta={self.beta}, mode={self.mode!r}, weight={self.weight}, share={self.share}"


def members(curators: Optional[nn.ModuleList]) -> list[Curator]:
    """The curators of a ``ModuleList`` (none for ``None``), typed."""
    return [cast(Curator, c) for c in curators] if curators is not None else []


def check_population(curators: Optional[Sequence[Curator]]) -> tuple[Optional[nn.ModuleList], Tensor, list[str]]:
    """The curators as a ``ModuleList``, their normalised weights ``pi`` (float64) and unique names."""
    if curators is None:
        return None, torch.ones(1, dtype=torch.float64), []
    if isinstance(curators, nn.Module) and not isinstance(curators, nn.ModuleList):
        raise TypeError("curators must be a list of Curator, got a single module; wrap it in a list")
    curators = list(curators)
    if not curators:
        raise ValueError("curators must list at least one Curator (or be left out: one curator from reward/beta/mode)")
    for i, c in enumerate(curators):
        if not isinstance(c, Curator):
            raise TypeError(f"curators[{i}] must be a lightning_curate.loop.Curator, got {type(c).__name__}")
    for i, c in enumerate(curators):
        c.name = c.name or f"curator{i}"
    names = [c.name for c in curators]
    if len(set(names)) != len(names):
        raise ValueError(f"curators must have distinct names (they name columns), got {names}")
    return nn.ModuleList(curators), population_shares(curators), names


def population_shares(curators: Sequence[Curator]) -> Tensor:
    """``pi``: the fixed ``share`` s, and the rest split among the other curators by weight."""
    fixed = sum(c.share for c in curators if c.share is not None)
    if fixed > 1 + 1e-9:
        raise ValueError(f"curators: the shares add up to {fixed} > 1")
    weights = torch.tensor([c.weight if c.share is None else 0.0 for c in curators], dtype=torch.float64)
    rest = max(0.0, 1.0 - fixed)
    if rest > 1e-12 and float(weights.sum()) <= 0:
        raise ValueError("curators: the weights must not all be 0" if fixed == 0 else
                         f"curators: the shares add up to {fixed} < 1 and no other curator has a weight")
    pi = weights / weights.sum() * rest if float(weights.sum()) > 0 else weights
    for i, c in enumerate(curators):
        if c.share is not None:
            pi[i] = c.share
    return pi / pi.sum()


def draw_curators(seed: int, block: int, n: int, pi: Tensor) -> Tensor:
    """Which curator curates each of the ``n`` slots of ``block``: int64 ``[n]`` on the CPU.

    Seeded by (round seed, block) alone, drawn on the CPU: the same on every device, chunking and rank.
    """
    gen = make_generator(derive_seed(seed, "curator", block))
    return torch.multinomial(pi, n, replacement=True, generator=gen)


def choice_log_weights(rewards: Tensor, mode: str, beta: float) -> Tensor:
    """Log-weights of the choice law per slot, for its entropy (argmax: 0 at the best, uniform: 1)."""
    if mode == "uniform":
        return torch.zeros_like(rewards)
    if mode == "argmax":
        best = rewards.argmax(dim=1, keepdim=True)
        return torch.full_like(rewards, -math.inf).scatter_(1, best, 0.0)
    return beta * rewards


def choose_block(curators: nn.ModuleList, rewards: Tensor, assign: Tensor, num_winners: int, seed: int,
                 block: int, backend: str) -> tuple[Tensor, Tensor]:
    """Each slot's winners by its own curator: index ``[nb, m]`` and the choice log-weights ``[nb, K]``.

    ``rewards [U, nb, K]``: every curator's reward of every candidate. Curator 0 draws with the
    one-curator seed of the block, so a population of one repeats the one-curator round exactly.
    """
    _, nb, k = rewards.shape
    index = torch.empty(nb, num_winners, dtype=torch.long, device=rewards.device)
    scores = torch.empty(nb, k, dtype=rewards.dtype, device=rewards.device)
    assign = assign.to(rewards.device)
    for u, c in enumerate(members(curators)):
        rows = (assign == u).nonzero().flatten()
        if rows.numel() == 0:
            continue
        r_u = rewards[u, rows]
        seed_u = derive_seed(seed, "choice", block) if u == 0 else derive_seed(seed, "choice", block, u)
        check_beta_spread(c.beta, r_u, c.mode, name=f"curators[{u}].beta")
        res = kchoice(r_u, c.beta, num_winners=num_winners, mode=c.mode, seed=seed_u, backend=backend, check=True)
        index[rows] = res.index.view(-1, num_winners)
        scores[rows] = choice_log_weights(r_u, c.mode, c.beta)
    return index, scores


def _state_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers: two rewards with the same class but other centres differ.

    A classifier reward keeps its network outside the module tree (loaded from its checkpoint
    file), so its weights are not in this digest: its checkpoint path is, through its arguments.
    """
    digest = hashlib.sha256()
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def curator_settings(curators: Optional[nn.ModuleList]) -> list[dict[str, Any]]:
    """What a resume must keep: each curator's name, weight, beta, mode and reward (class, args, state)."""
    if curators is None:
        return []
    return [{"name": c.name, "weight": c.weight, "share": c.share, "beta": c.beta, "mode": c.mode,
             "reward": describe_module(c.reward)} for c in members(curators)]


def same_reward(a: nn.Module, b: nn.Module) -> bool:
    """Whether two reward modules are the same function (class, arguments and state), so one's
    scores can stand for the other's: an honest curator's reward is usually the reference's."""
    return a is b or describe_module(a) == describe_module(b)


def describe_module(module: nn.Module) -> dict[str, Any]:
    """A reward's class, plain arguments (wrapped rewards described alike) and state digest."""
    args: dict[str, Any] = init_args_of(module)
    for name, child in module.named_children():
        args[name] = describe_module(child)
    return {"class_path": qualname(module), "init_args": args, "state": _state_digest(module)}
