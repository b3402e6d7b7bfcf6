"""The LightningModule: a generative model trained by Lightning, and the curation of its samples.

``training_step`` fits the generator (its own loss) on the round's data.
``curate_round`` is one curation step of docs/THEORY.md section 1 at a round
boundary: sample ``num_slots x num_candidates`` candidates block by block
(bounded memory), score them with the reward model, keep ``num_winners`` per
slot with :func:`lightning_curate.kchoice` (or a fraction of the whole pool,
:mod:`lightning_curate.loop.selection`), optionally transform the kept samples
(:mod:`lightning_curate.loop.transforms`), and measure the round.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from lightning_curate.loop.curators import (
    Curator,
    check_population,
    curator_settings,
    describe_module,
    members,
    same_reward,
)
from lightning_curate.loop.schedule import SlotSchedule
from lightning_curate.loop.selection import (
    SLOT_BLOCK,
    PoolFraction,
    Selection,
    check_selection,
    curate_pool,
    kchoice_blocks,
)
from lightning_curate.loop.training import GeneratorTraining
from lightning_curate.loop.transforms import transform_part
from lightning_curate.metrics.curation import ModeShares, RewardStats, SelectionEntropy, SlicedWasserstein
from lightning_curate.models.generator import Generator
from lightning_curate.ops.kchoice import BACKENDS, MODES
from lightning_curate.utils.columns import CURATED_REWARD_MEAN_OF, CURATED_SHARE, REWARD_MEAN_OF, SHARE, SLOTS, Col
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator
from lightning_curate.utils.validation import check_beta, check_choice, check_float, check_int

__all__ = ["PHASES", "SLOT_BLOCK", "CurationModule", "CurationOutcome"]

PHASES = ("generate", "reward", "curate", "store")
# Lightning's warning at training start about modules in eval mode (fit_loop), as a regex for one count.
EVAL_MODE_WARNING = r"Found {count} module\(s\) in eval mode at the start of training"


@dataclass
class CurationOutcome:
    """What one curation step produced: tensors for the store and the round's metrics."""

    tensors: dict[str, Tensor]
    row: dict[str, float] = field(default_factory=dict)


class CurationModule(GeneratorTraining):
    """Wraps a :class:`~lightning_curate.models.Generator` and a reward model.

    Args:
        generator: the generative model (e.g. ``FlowMatching``), trained with its own loss.
        reward: any ``nn.Module`` mapping a batch ``[n, ...]`` to rewards ``[n]``; frozen.
        num_slots: curation slots per round (``N``); each keeps ``num_winners`` samples.
        num_candidates: candidates shown per slot (``K``).
        beta: inverse temperature of the Bradley-Terry choice.
        num_winners: samples kept per slot (``m``, Plackett-Luce order for ``m > 1``).
        mode: ``softmax`` (Bradley-Terry), ``argmax`` (best-of-K) or ``uniform`` (no curation).
        chunk_size: slots generated, scored and curated together (bounds memory only).
        lr, weight_decay: AdamW settings for the generator.
        preview_size: model samples kept per round for plots and the distance metric
            (the first candidate of each slot, so at most ``num_slots``).
        backend: ``kchoice`` backend (``auto``: Triton on CUDA, torch on CPU).
        curators: a population (:class:`~lightning_curate.loop.Curator` s, see
            :mod:`lightning_curate.loop.curators`): each slot is curated by one of them, drawn
            by weight; ``beta`` and ``mode`` then serve only the one-curator diagnostics
            (``exp_reward_mean``), and ``reward`` stays the reference (honest) reward.
        log_choices: slots (the first ones, like the preview) whose whole choice is kept for
            ``lightning-curate-reward``: ``choice_candidates [n, K, ...]``, ``choice_index [n, m]``,
            ``choice_slot``, ``choice_rewards [n, K]`` (the reference reward) and, with curators,
            ``choice_curator``.
        steps_per_batch: optimizer steps per Lightning batch; above 1, Lightning's per-batch
            work runs once per that many steps, with the same trained weights bit for bit
            (see :class:`~lightning_curate.loop.training.GeneratorTraining`).
        selection: which candidates are kept: :class:`~lightning_curate.loop.SlotChoice` (the default,
            the per-slot choice above) or :class:`~lightning_curate.loop.PoolFraction` (the top,
            bottom or a random fraction of the whole pool, by reward or likelihood).
        transform: an ``nn.Module`` ``x -> x`` (same shape) applied to the kept samples before they
            are stored (a correction, a verifier; e.g. :class:`~lightning_curate.loop.ManifoldProjection`).
        num_slots_schedule: how ``num_slots`` grows by round
            (:class:`~lightning_curate.loop.SlotSchedule`; default constant).
    """

    def __init__(self, generator: Generator, reward: nn.Module, num_slots: int = 2000,
                 num_candidates: int = 4, beta: float = 1.0, num_winners: int = 1, mode: str = "softmax",
                 chunk_size: int = 8192, lr: float = 1e-3, weight_decay: float = 0.0,
                 preview_size: int = 2000, backend: str = "auto", curators: Optional[list[Curator]] = None,
                 log_choices: int = 0, steps_per_batch: int = 1, selection: Optional[Selection] = None,
                 transform: Optional[nn.Module] = None, num_slots_schedule: Optional[SlotSchedule] = None):
        super().__init__(steps_per_batch)
        check_int("num_slots", num_slots, minimum=1)
        check_int("num_candidates", num_candidates, minimum=1)
        check_int("num_winners", num_winners, minimum=1)
        check_int("chunk_size", chunk_size, minimum=1)
        check_int("preview_size", preview_size, minimum=0)
        check_int("log_choices", log_choices, minimum=0)
        if num_winners > num_candidates:
            raise ValueError(f"num_winners ({num_winners}) must be <= num_candidates ({num_candidates})")
        check_beta(beta)
        check_choice("mode", mode, MODES)
        check_choice("backend", backend, BACKENDS)
        check_float("lr", lr, minimum=0.0, strict_minimum=True)
        self.save_hyperparameters(ignore=["generator", "reward", "curators", "selection", "transform",
                                          "num_slots_schedule"])
        self.generator = generator
        self.reward = reward.requires_grad_(False).eval()
        self.num_slots, self.num_candidates, self.num_winners = num_slots, num_candidates, num_winners
        self.beta, self.mode, self.chunk_size = float(beta), mode, chunk_size
        self.lr, self.weight_decay, self.preview_size, self.backend = lr, weight_decay, preview_size, backend
        self.log_choices = log_choices
        # The population, its normalised shares pi (float64, on the CPU) and names (None, [1.], [] for one curator).
        self.curators, self.curator_shares, self.curator_names = check_population(curators)
        self.selection = check_selection(selection, generator, curators=curators, num_winners=num_winners,
                                         log_choices=log_choices)
        if transform is not None and not isinstance(transform, nn.Module):
            raise TypeError(f"transform must be an nn.Module mapping samples to samples, "
                            f"got {type(transform).__name__}")
        self.transform = transform.requires_grad_(False).eval() if transform is not None else None
        if num_slots_schedule is not None and not isinstance(num_slots_schedule, SlotSchedule):
            raise TypeError(f"num_slots_schedule must be a SlotSchedule, got {type(num_slots_schedule).__name__}")
        self.num_slots_schedule = num_slots_schedule
        self._reuses_reference = [same_reward(c.reward, self.reward) for c in members(self.curators)]
        self.curator_reward = nn.ModuleList([RewardStats() for _ in self.curator_names])
        self.curator_curated = nn.ModuleList([RewardStats() for _ in self.curator_names])
        self.curator_slots = ModeShares(len(self.curator_names)) if self.curators is not None else None
        self.model_reward = RewardStats()
        self.curated_reward = RewardStats()
        self.stored_reward = RewardStats()  # of the stored (transformed) samples, with a transform
        self.selection_entropy = SelectionEntropy()
        # Computed on one process from the merged preview (see RetrainingLoop), never synced.
        self.distance = SlicedWasserstein(sync_on_compute=False)
        self.model_shares: Optional[ModeShares] = None  # sized once the class names are known
        self.curated_shares: Optional[ModeShares] = None
        self.timings = dict.fromkeys(PHASES, 0.0)

    def prepare_data(self) -> None:
        # A reward that needs local artifacts (a classifier checkpoint) makes them here, once.
        for reward in [self.reward] + [c.reward for c in members(self.curators)]:
            prepare = getattr(reward, "prepare", None)
            if callable(prepare):
                prepare()

    # -- training (the rest is GeneratorTraining's) ---------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.reward.eval()  # the reward model is a fixed judge: never in training mode
        if self.transform is not None:
            self.transform.eval()
        for c in members(self.curators):
            c.reward.eval()
        return self

    def frozen_module_names(self) -> set[str]:
        """The submodules kept in eval mode on purpose: the reward models (fixed judges) and theirs."""
        roots = ["reward", "transform"] + [f"curators.{i}.reward" for i in range(len(members(self.curators)))]
        return {name for name, _ in self.named_modules() if any(name == r or name.startswith(r + ".") for r in roots)}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Lightning warns at training start of every module in eval mode. Ours are the frozen reward
        # models, declared above: when they are all it would name, that one message is not shown.
        # Any other module in eval mode (a user's generator part) keeps the warning.
        self.train()
        in_eval = {name for name, module in self.named_modules() if not module.training}
        self._eval_warning_filter = None
        if in_eval and in_eval <= self.frozen_module_names():
            warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING.format(count=len(in_eval)))
            self._eval_warning_filter = warnings.filters[0]

    def on_train_start(self) -> None:
        super().on_train_start()
        entry = getattr(self, "_eval_warning_filter", None)
        if entry is not None and entry in warnings.filters:  # only the one check at training start
            cast(list, warnings.filters).remove(entry)
        self._eval_warning_filter = None

    # -- curation -----------------------------------------------------------
    def score(self, x: Tensor, round_idx: int, reward: Optional[nn.Module] = None) -> Tensor:
        """Rewards ``[n]`` of samples ``x`` (by ``reward``, default the module's), checked: a bad
        reward model stops the run."""
        with torch.inference_mode():
            r = (self.reward if reward is None else reward)(x)
        if not isinstance(r, Tensor) or tuple(r.shape) != (x.shape[0],):
            shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(f"round {round_idx}: the reward model returned shape {shape} for {x.shape[0]} samples; "
                             f"it must return one reward per sample, shape [{x.shape[0]}]")
        bad = int((~torch.isfinite(r)).sum())
        if bad:
            raise ValueError(f"round {round_idx}: the reward model returned {bad} non-finite rewards (NaN or inf) "
                             f"out of {x.shape[0]}")
        return r.float().clone()

    def mean_score(self, x: Tensor, round_idx: int, chunk: int = 4096) -> float:
        """The mean reward of ``x`` (on the module's device, ``chunk`` rows at a time: a whole
        training set at once could exhaust a GPU's memory), in float64."""
        total = sum(float(self.score(part.to(self.device), round_idx).double().sum()) for part in x.split(chunk))
        return total / max(1, x.shape[0])

    def slots_of_round(self, round_idx: int) -> int:
        """The slots round ``round_idx`` curates: ``num_slots``, or its ``num_slots_schedule``'s."""
        schedule = self.num_slots_schedule
        return self.num_slots if schedule is None else schedule.slots(self.num_slots, round_idx)

    @torch.no_grad()
    def curate_round(self, round_idx: int, seed: int,
                     label_fn: Optional[Callable[[Tensor], Optional[Tensor]]] = None,
                     class_names: Optional[list[str]] = None,
                     sink: Optional[Callable[[dict[str, Tensor], int], None]] = None,
                     rank: int = 0, world_size: int = 1) -> CurationOutcome:
        """One curation step from the current model; see the module docstring.

        Under DDP each rank curates the blocks ``b`` with ``b % world_size == rank``;
        the draws of a block depend on (seed, block) only, so the round's data do
        not depend on the number of ranks. With a ``sink``, each chunk's winners
        are handed to it (``sink(tensors, chunk_index)``) instead of being kept,
        so memory stays bounded by one chunk; the outcome then holds only the
        preview. The metrics are torchmetrics states, reduced across ranks.
        """
        n_slots, k = self.slots_of_round(round_idx), self.num_candidates
        n_classes = len(class_names) if class_names and label_fn is not None else 0
        self._reset_round_metrics(n_classes)
        kept: list[dict[str, Tensor]] = []
        preview: list[dict[str, Tensor]] = []
        self.timings = dict.fromkeys(PHASES, 0.0)
        my_blocks = list(range(rank, math.ceil(n_slots / SLOT_BLOCK), world_size))
        chunk_blocks = max(1, math.ceil(self.chunk_size / SLOT_BLOCK))
        chunks = [my_blocks[first:first + chunk_blocks] for first in range(0, len(my_blocks), chunk_blocks)]

        def draw(blocks: list[int], sizes: list[int]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
            with self._phase("generate"):
                cands = torch.cat([
                    self.generator.sample(nb * k, generator=make_generator(derive_seed(seed, "candidates", b)),
                                          device=self.device)
                    for b, nb in zip(blocks, sizes)])
            with self._phase("reward"):
                rewards = self.score(cands, round_idx)
                if self.curators is not None:  # [1 + U, n]: every curator scores every candidate, once
                    rewards = torch.stack([rewards] + [rewards if same else self.score(cands, round_idx, c.reward)
                                                       for c, same in zip(members(self.curators),
                                                                          self._reuses_reference)])
                labels = label_fn(cands) if n_classes and label_fn is not None else None
            return cands, rewards, labels

        if isinstance(self.selection, PoolFraction):
            parts = curate_pool(self, self.selection, chunks, n_slots, seed, round_idx, draw, world_size)
        else:
            parts = self._kchoice_parts(chunks, n_slots, seed, draw)
        for chunk_idx, (part, probe) in enumerate(parts):
            if probe is not None:
                preview.append(probe)
            if self.transform is not None:
                with self._phase("curate"):
                    part = transform_part(self, part, label_fn if n_classes else None, round_idx)
            with self._phase("store"):
                if sink is not None:
                    sink(part, chunk_idx)
                else:
                    kept.append(part)

        tensors = _cat_parts(kept)
        tensors.update(_cat_parts(preview))
        row = self._round_row(class_names if n_classes else None)
        if self.num_slots_schedule is not None:
            row["num_slots"] = float(n_slots)
        if self.transform is not None:
            row["stored_reward_mean"] = float(self.stored_reward.compute()["mean"])
        return CurationOutcome(tensors=tensors, row=row)

    def _kchoice_parts(self, chunks, n_slots, seed, draw):
        """Each chunk's winners and probe by the per-slot K-choice (``draw`` generates and scores it)."""
        for blocks in chunks:
            sizes = [min(SLOT_BLOCK, n_slots - b * SLOT_BLOCK) for b in blocks]
            cands, rewards, labels = draw(blocks, sizes)
            with self._phase("curate"):
                part = self._curate_blocks(blocks, sizes, cands, rewards, labels, seed)
            yield part
            del cands, rewards, labels

    def _curate_blocks(self, blocks, sizes, cands, rewards, labels, seed):
        """Choose the winners of each block of a chunk by the K-choice; update the round's metrics
        (:func:`~lightning_curate.loop.selection.kchoice_blocks`)."""
        return kchoice_blocks(self, blocks, sizes, cands, rewards, labels, seed)

    def _reset_round_metrics(self, n_classes: int) -> None:
        for metric in (self.model_reward, self.curated_reward, self.stored_reward, self.selection_entropy,
                       *self.curator_reward, *self.curator_curated, *([self.curator_slots] if self.curators else [])):
            metric.reset()
        if n_classes and (self.model_shares is None or self.model_shares.num_modes != n_classes):
            self.model_shares = ModeShares(n_classes).to(self.device)
            self.curated_shares = ModeShares(n_classes).to(self.device)
        for shares in (self.model_shares, self.curated_shares):
            if shares is not None:
                shares.reset()

    def _round_row(self, class_names: Optional[list[str]]) -> dict[str, float]:
        """The round's metrics, reduced across ranks (every rank calls this)."""
        model_stats = self.model_reward.compute()
        curated_stats = self.curated_reward.compute()
        row = {
            Col.REWARD_MEAN: float(model_stats["mean"]),
            Col.REWARD_STD: float(model_stats["std"]),
            Col.CURATED_REWARD_MEAN: float(curated_stats["mean"]),
            Col.CURATED_REWARD_STD: float(curated_stats["std"]),
            # A per-slot choice's entropy: a pool selection makes none (NaN).
            Col.SELECTION_ENTROPY: (math.nan if isinstance(self.selection, PoolFraction)
                                    else float(self.selection_entropy.compute())),
        }
        if self.curator_slots is not None:  # each curator's reward of the model's and the kept samples
            slots = self.curator_slots.compute().reshape(-1).tolist()
            stats = zip(self.curator_names, self.curator_reward, self.curator_curated, slots)
            for name, model, curated, share in stats:
                row[REWARD_MEAN_OF(name)] = float(cast(RewardStats, model).compute()["mean"])
                row[CURATED_REWARD_MEAN_OF(name)] = float(cast(RewardStats, curated).compute()["mean"])
                row[SLOTS(name)] = share
        if class_names:
            # curate_round passes class names only with n_classes > 0, and
            # _reset_round_metrics has then built both ModeShares.
            assert self.model_shares is not None and self.curated_shares is not None
            model_shares = self.model_shares.compute().tolist()
            curated_shares = self.curated_shares.compute().tolist()
            for name, share, cshare in zip(class_names, model_shares, curated_shares):
                row[SHARE(name)] = share
                row[CURATED_SHARE(name)] = cshare
        return row

    def population_settings(self) -> dict[str, Any]:
        """The science settings beyond the one curator's: ``curators``, ``selection``, ``transform`` and
        ``num_slots_schedule``, each only when set (a run without them is recorded as before)."""
        out: dict[str, Any] = {"curators": curator_settings(self.curators)} if self.curators is not None else {}
        if self.selection.settings() is not None:
            out["selection"] = self.selection.settings()
        if self.transform is not None:
            out["transform"] = describe_module(self.transform)
        if self.num_slots_schedule is not None:
            out["num_slots_schedule"] = self.num_slots_schedule.settings()
        return out

    def sample_distance(self, samples: Tensor, reference: Tensor) -> float:
        """Sliced Wasserstein distance of model samples to held-out real data (this process only)."""
        self.distance.reset()
        self.distance.update(samples=samples.reshape(len(samples), -1).to(self.device),
                             real=reference.reshape(len(reference), -1).to(self.device))
        return float(self.distance.compute())

    @contextmanager
    def _phase(self, name: str):
        """Time a phase of the round, and name it for the profiler."""
        start = time.perf_counter()
        with record_function(f"curate_round/{name}"):
            yield
        self.timings[name] += time.perf_counter() - start


def _cat_parts(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if not parts:
        return {}
    keys = dict.fromkeys(key for p in parts for key in p)  # a chunk past the preview may log choices only
    return {key: torch.cat([p[key] for p in parts if key in p]) for key in keys}

