"""Which of a round's candidates are kept: the per-slot K-choice, or a fraction of the whole pool.

A round draws ``num_slots x K`` candidates (the *pool*). ``CurationModule(selection=...)`` says
which of them go to the store:

* :class:`SlotChoice` (the default): each slot keeps ``num_winners`` of its ``K`` candidates by the
  Bradley-Terry choice (``beta``, ``mode``, or a population of curators): docs/THEORY.md section 1.
* :class:`PoolFraction`: the ``top``, ``bottom`` or a ``random`` fraction of the whole pool, ranked
  by the reward or by the generator's own log-likelihood (``generator.log_prob(x) -> [n]``).

A pool fraction needs the pool-wide threshold, but the pool may not fit in memory: only one chunk
of candidates is ever held. So the round runs in **two passes**. The first generates and scores
every chunk and keeps only the scores (one float per candidate, thousands of times smaller than an
image); the kept set is then exact: the candidates ranked by score, ties broken by the lower
candidate index (``slot * K + j``), the first ``floor(fraction * pool)`` kept. The second pass
regenerates each chunk from the same per-block seeds (``derive_seed(seed, "candidates", b)``, so
the candidates are the first pass's exactly; a chunk whose rewards differ from the first pass's is
an error, never a silent other set) and keeps those in the set. A rank whose blocks are one chunk
keeps its candidates from the first pass instead of regenerating them. Under DDP
each rank scores its own blocks and the scores are summed over ranks (``all_reduce``), so every
rank knows the same kept set: the round is the same on any number of ranks and any chunk size.

Example (YAML, on the ``model`` section)::

    selection:
      class_path: lightning_curate.loop.PoolFraction
      init_args: {rule: top, fraction: 0.25, score: reward}
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor

from lightning_curate.loop.curators import choice_log_weights, choose_block, draw_curators
from lightning_curate.metrics.curation import RewardStats
from lightning_curate.models.generator import has_log_prob
from lightning_curate.ops.kchoice import kchoice
from lightning_curate.theory.truncation import POOL_RULES
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator
from lightning_curate.utils.validation import check_beta_spread, check_choice, check_float

__all__ = ["SlotChoice", "POOL_SCORES", "SLOT_BLOCK", "PoolFraction", "Selection", "candidate_index", "check_selection",
           "curate_pool", "kchoice_blocks", "kept_mask", "pool_keys"]

POOL_SCORES = ("reward", "likelihood")
# Randomness is keyed to fixed blocks of slots: the candidates and choices of a
# block depend on (round seed, block index) only, so chunk_size never changes a round.
SLOT_BLOCK = 512


class Selection:
    """What a round keeps of its candidates (a base: :class:`SlotChoice` or :class:`PoolFraction`)."""

    def settings(self) -> Optional[dict[str, Any]]:
        """The science settings it adds to the manifest (``None``: the default, recorded as absent)."""
        return None


class SlotChoice(Selection):
    """Today's choice, and the default: each slot keeps ``num_winners`` of its ``K`` candidates by the
    module's ``beta`` and ``mode`` (or its curators). Bit for bit what a module without ``selection`` does.

    Example:
        >>> SlotChoice().settings() is None
        True
    """

    def __repr__(self) -> str:
        return "SlotChoice()"


class PoolFraction(Selection):
    """Keep a fraction of the round's whole pool of ``num_slots x K`` candidates.

    Args:
        rule: ``top`` (the highest scores), ``bottom`` (the lowest) or ``random`` (a uniform draw of
            the same size, seeded by round and block: the score only feeds the metrics).
        fraction: the kept share of the pool, in ``(0, 1]``; ``floor(fraction * pool)`` candidates
            (at least one) are kept.
        score: ``reward`` (the module's reward model) or ``likelihood``: the generator's own
            ``log_prob(x) -> Tensor[n]``, called under ``torch.no_grad`` (a model whose density needs
            autograd enables it itself); a generator without one is refused when the module is built.

    Example:
        >>> PoolFraction("top", 0.25).keep_count(4000)
        1000
    """

    def __init__(self, rule: str = "top", fraction: float = 0.25, score: str = "reward") -> None:
        self.rule = check_choice("selection.rule", rule, POOL_RULES)
        self.fraction = check_float("selection.fraction", fraction, minimum=0.0, maximum=1.0, strict_minimum=True)
        self.score = check_choice("selection.score", score, POOL_SCORES)

    def keep_count(self, pool: int) -> int:
        """How many of a pool of ``pool`` candidates are kept."""
        return max(1, math.floor(self.fraction * pool + 1e-9))

    def settings(self) -> dict[str, Any]:
        """``{"class": "PoolFraction", "rule", "fraction", "score"}``."""
        return {"class": "PoolFraction", "rule": self.rule, "fraction": self.fraction, "score": self.score}

    def __repr__(self) -> str:
        return f"PoolFraction(rule={self.rule!r}, fraction={self.fraction}, score={self.score!r})"


def check_selection(selection: Optional[Selection], generator: Any, *, curators: Any, num_winners: int,
                    log_choices: int) -> Selection:
    """The module's selection (``SlotChoice`` for ``None``), refused where it cannot work."""
    if selection is None:
        return SlotChoice()
    if not isinstance(selection, Selection):
        raise TypeError(f"selection must be a lightning_curate.loop.SlotChoice or PoolFraction, "
                        f"got {type(selection).__name__}")
    if isinstance(selection, PoolFraction):
        where = f"selection {selection!r}"
        if curators is not None:
            raise ValueError(f"{where} keeps a fraction of the whole pool; curators choose within a slot. "
                             "Use one or the other")
        if num_winners != 1:
            raise ValueError(f"{where}: num_winners ({num_winners}) is a per-slot setting; leave it at 1 "
                             "(the kept count is fraction * num_slots * num_candidates)")
        if log_choices:
            raise ValueError(f"{where}: log_choices logs per-slot choices, which a pool selection does not make; "
                             "set log_choices: 0")
        if selection.score == "likelihood" and not has_log_prob(generator):  # not the base's NotImplementedError
            raise TypeError(f"selection.score 'likelihood' needs the generator's log-likelihood, "
                            f"log_prob(x) -> Tensor[n]; {type(generator).__name__} has none. Use score: reward")
    return selection


def candidate_index(blocks: list[int], sizes: list[int], k: int) -> Tensor:
    """The pool index (``slot * K + j``) of every candidate of a chunk, in the chunk's order.

    Example:
        >>> candidate_index([1], [2], 3).tolist()
        [1536, 1537, 1538, 1539, 1540, 1541]
    """
    return torch.cat([b * SLOT_BLOCK * k + torch.arange(nb * k) for b, nb in zip(blocks, sizes)])


def pool_keys(selection: PoolFraction, module: Any, cands: Tensor, rewards: Tensor, blocks: list[int],
              sizes: list[int], k: int, seed: int, round_idx: int) -> Tensor:
    """The ranking key of every candidate of a chunk (float64): its reward, its log-likelihood, or
    a uniform number drawn on the CPU from (round seed, block) for ``random``."""
    if selection.rule == "random":
        return torch.cat([torch.rand(nb * k, generator=make_generator(derive_seed(seed, "pool", b)),
                                     dtype=torch.float64) for b, nb in zip(blocks, sizes)])
    if selection.score == "reward":
        return rewards.detach().double().cpu()
    # Called under the round's no_grad, not inference_mode: a model whose log-density needs autograd
    # (a flow's divergence) may enable it itself on these candidates.
    logp = module.generator.log_prob(cands)
    if not isinstance(logp, Tensor) or tuple(logp.shape) != (cands.shape[0],):
        shape = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
        raise ValueError(f"round {round_idx}: {type(module.generator).__name__}.log_prob returned shape {shape} "
                         f"for {cands.shape[0]} samples (selection.score 'likelihood'); it must be [{cands.shape[0]}]")
    bad = int((~torch.isfinite(logp)).sum())
    if bad:
        raise ValueError(f"round {round_idx}: {type(module.generator).__name__}.log_prob returned {bad} non-finite "
                         f"values out of {cands.shape[0]} (selection.score 'likelihood')")
    return logp.detach().double().cpu()


def kept_mask(keys: Tensor, keep: int, rule: str) -> Tensor:
    """Which entries of ``keys`` (the whole pool, by pool index) are kept: the ``keep`` largest
    (``top``, ``random``) or smallest (``bottom``), ties broken by the lower index.

    Example:
        >>> kept_mask(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2, "top").tolist()
        [False, True, True, False]
        >>> kept_mask(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2, "bottom").tolist()
        [True, False, False, True]
    """
    order = torch.sort(keys, descending=rule != "bottom", stable=True).indices  # stable: ties by index
    mask = torch.zeros(keys.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def _global_keys(keys: Tensor, world_size: int) -> Tensor:
    """Every rank's keys summed (each rank filled only its own blocks' entries)."""
    if world_size == 1:
        return keys
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"selection PoolFraction on {world_size} ranks needs torch.distributed initialised "
                           "(the pool-wide threshold is reduced over the ranks); run it under the Trainer's DDP")
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    total = keys.to(device)
    dist.all_reduce(total)
    return total.cpu()


def curate_pool(module: Any, selection: PoolFraction, chunks: list[list[int]], n_slots: int, seed: int,
                round_idx: int, draw: Callable[[list[int], list[int]], tuple[Tensor, Tensor, Optional[Tensor]]],
                world_size: int = 1):
    """Yield each chunk's kept part and probe, for ``CurationModule.curate_round`` (see the module docstring).

    ``draw(blocks, sizes)`` returns the chunk's candidates, rewards and labels (generated and scored
    under the module's phase timers). Yields ``(part, probe)`` dicts like ``_curate_blocks``'.
    """
    k = module.num_candidates
    pool = n_slots * k
    keep = selection.keep_count(pool)
    keys = torch.zeros(pool, dtype=torch.float64)
    cached = None
    checksums: list[float] = []  # each chunk's reward sum: the regenerated chunk must give it again
    for blocks in chunks:  # pass 1: the keys of the whole pool
        sizes = [min(SLOT_BLOCK, n_slots - b * SLOT_BLOCK) for b in blocks]
        cands, rewards, labels = draw(blocks, sizes)
        with module._phase("curate"):
            keys[candidate_index(blocks, sizes, k)] = pool_keys(selection, module, cands, rewards, blocks, sizes, k,
                                                                seed, round_idx)
            checksums.append(float(rewards.detach().double().cpu().sum()))
        if len(chunks) == 1:
            cached = (cands, rewards, labels)
        del cands, rewards, labels
    with module._phase("curate"):
        mask = kept_mask(_global_keys(keys, world_size), keep, selection.rule)
    del keys
    for blocks, checksum in zip(chunks, checksums):  # pass 2: the kept candidates, chunk by chunk
        sizes = [min(SLOT_BLOCK, n_slots - b * SLOT_BLOCK) for b in blocks]
        cands, rewards, labels = cached if cached is not None else draw(blocks, sizes)
        with module._phase("curate"):
            if float(rewards.detach().double().cpu().sum()) != checksum:
                raise RuntimeError(
                    f"round {round_idx}: selection {selection!r} regenerated blocks {blocks} from their seeds and "
                    f"got other candidates than the first pass: {type(module.generator).__name__}.sample is not "
                    "deterministic for a seeded generator here (global RNG use, or nondeterministic kernels). "
                    "Set chunk_size >= num_slots so that the pool is kept from the first pass")
            out = _pool_part(module, blocks, sizes, cands, rewards, labels, mask)
        yield out
        del cands, rewards, labels


def _pool_part(module: Any, blocks: list[int], sizes: list[int], cands: Tensor, rewards: Tensor,
               labels: Optional[Tensor], mask: Tensor) -> tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]:
    """A chunk's kept candidates (in pool order) and its probe; the round's metrics updated."""
    k = module.num_candidates
    index = candidate_index(blocks, sizes, k)
    take = mask[index]
    where = take.nonzero().flatten().to(cands.device)
    part = {"x": cands[where].cpu(), "slot": index[take] // k, "rewards": rewards[where].cpu()}
    module.model_reward.update(rewards)
    module.curated_reward.update(rewards[where])
    if labels is not None:
        part["labels"] = labels[where].cpu()
        module.model_shares.update(labels)
        module.curated_shares.update(labels[where])
    probe: dict[str, list[Tensor]] = {"preview": [], "preview_slot": [], "probe_rewards": []}
    if labels is not None:
        probe["probe_labels"] = []
    offset = 0
    for b, nb in zip(blocks, sizes):  # the first slots' first candidate and all K rewards, as the K-choice keeps
        slots = b * SLOT_BLOCK + torch.arange(nb)
        n_probe = int((slots < module.preview_size).sum())
        if n_probe:
            sl = slice(offset, offset + n_probe * k)
            probe["preview"].append(cands[sl].view(n_probe, k, *cands.shape[1:])[:, 0].cpu())
            probe["preview_slot"].append(slots[:n_probe])
            probe["probe_rewards"].append(rewards[sl].view(n_probe, k).cpu())
            if labels is not None:
                probe["probe_labels"].append(labels[sl].view(n_probe, k).cpu())
        offset += nb * k
    probe_part = {key: torch.cat(v) for key, v in probe.items() if v} or None
    return part, probe_part


def kchoice_blocks(module: Any, blocks: list[int], sizes: list[int], cands: Tensor, rewards: Tensor,
                   labels: Optional[Tensor], seed: int) -> tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]:
    """The K-choice's winners of each block of a chunk, and its probe; the round's metrics of ``module``
    (a :class:`~lightning_curate.loop.CurationModule`) updated.

    ``rewards``: ``[n]`` (one curator) or ``[1 + U, n]`` (the reference reward, then each curator's).
    """
    k, m = module.num_candidates, module.num_winners
    shape = tuple(module.generator.data_shape)
    out: dict[str, list[Tensor]] = {"x": [], "slot": [], "rewards": []}
    probe: dict[str, list[Tensor]] = {"preview": [], "preview_slot": [], "probe_rewards": []}
    if labels is not None:
        out["labels"], probe["probe_labels"] = [], []
    cur_rewards = None
    if module.curators is not None:
        rewards, cur_rewards = rewards[0], rewards[1:]
        probe["probe_curator_rewards"] = []
    offset = 0
    for b, nb in zip(blocks, sizes):
        sl = slice(offset, offset + nb * k)
        offset += nb * k
        r_block = rewards[sl].view(nb, k)
        block_cands = cands[sl].view(nb, k, *shape)
        rows = torch.arange(nb, device=r_block.device)[:, None]
        if cur_rewards is None:
            check_beta_spread(module.beta, r_block, module.mode)
            res = kchoice(r_block, module.beta, num_winners=m, mode=module.mode, seed=derive_seed(seed, "choice", b),
                          backend=module.backend, candidates=block_cands, check=True)  # flag read before commit
            index, chosen = res.index.view(nb, m), cast(Tensor, res.chosen)
            scores = choice_log_weights(r_block, module.mode, module.beta)
        else:
            assign = draw_curators(seed, b, nb, module.curator_shares)
            r_cur = cur_rewards[:, sl].view(-1, nb, k)
            index, scores = choose_block(module.curators, r_cur, assign, m, seed, b, module.backend)
            chosen = block_cands[rows, index]
            _update_curator_metrics(module, r_cur, index, assign)
        flat = (rows * k + index).reshape(-1)
        slots = b * SLOT_BLOCK + torch.arange(nb)
        out["x"].append(chosen.reshape(nb * m, *shape).cpu())
        out["slot"].append(slots.repeat_interleave(m))
        out["rewards"].append(r_block.reshape(-1)[flat].cpu())
        module.model_reward.update(r_block.reshape(-1))
        module.curated_reward.update(r_block.reshape(-1)[flat])
        module.selection_entropy.update(scores)
        if labels is not None:
            lab = labels[sl]
            out["labels"].append(lab[flat].cpu())
            module.model_shares.update(lab)
            module.curated_shares.update(lab[flat])
        # Slots below preview_size also keep their first candidate (an i.i.d. model
        # sample) and all K rewards: for plots, distances and predictions.
        n_probe = int((slots < module.preview_size).sum())
        if n_probe:
            probe["preview"].append(block_cands[:n_probe, 0].cpu())
            probe["preview_slot"].append(slots[:n_probe])
            probe["probe_rewards"].append(r_block[:n_probe].cpu())
            if labels is not None:
                probe["probe_labels"].append(labels[sl].view(nb, k)[:n_probe].cpu())
            if cur_rewards is not None:
                probe["probe_curator_rewards"].append(r_cur[:, :n_probe].permute(1, 2, 0).cpu())
        n_log = int((slots < module.log_choices).sum())
        if n_log:
            logged = {"choice_candidates": block_cands[:n_log], "choice_index": index[:n_log],
                      "choice_slot": slots[:n_log], "choice_rewards": r_block[:n_log]}
            if cur_rewards is not None:
                logged["choice_curator"] = assign[:n_log]
            for key, value in logged.items():
                probe.setdefault(key, []).append(value.cpu())
    part = {key: torch.cat(v) for key, v in out.items()}
    probe_part = {key: torch.cat(v) for key, v in probe.items() if v} or None
    return part, probe_part

def _update_curator_metrics(module: Any, r_cur: Tensor, index: Tensor, assign: Tensor) -> None:
    """Each curator's reward of the model's samples and of the kept ones, and the slots each curated."""
    assert module.curator_slots is not None
    kept = r_cur.gather(2, index.unsqueeze(0).expand(r_cur.shape[0], -1, -1))
    for u, (model, curated) in enumerate(zip(module.curator_reward, module.curator_curated)):
        cast(RewardStats, model).update(r_cur[u].reshape(-1))
        cast(RewardStats, curated).update(kept[u].reshape(-1))
    module.curator_slots.update(assign.to(module.device))
