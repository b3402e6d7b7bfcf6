"""``lightning-curate diagnose budget``: how a round's learner gap shrinks with the round's training budget.

The *learner gap* (docs/THEORY.md section 5.5) is how far a round's generator ends from the
mean reward of the very set it was trained on. A steady gap is what pulls late rounds' fidelity
down, when the predicted moves are small. This diagnostic measures the gap against the budget with
everything else fixed: it refits one round of a run from the run's own state at that round's
start (the weights, the EMA, the optimizer's moments and the training set the loop would build),
once for every pair of ``--steps`` (optimizer steps) and ``--batch-sizes``, with ``--seeds``
shuffling seeds each, then samples every refit from the same source noise with the run's own
solver and scores it.

``RUN_DIR`` is a run stopped at the end of round ``t - 1``: its ``checkpoints/last.ckpt``, its
``config.yaml`` and its round store; round ``t`` is refitted. A run with ``rounds: t - 1`` in its
loop is one; ``lightning-curate diagnose jitter ... --work-dir W`` leaves one in ``W/base``. The
run directory is only read; its ``config.yaml`` is trusted as any config is (it names the classes
to build, as the run did) and the checkpoint is read with ``weights_only=True``.

Refits use the module's optimizer (``configure_optimizers``), the loop's batches
(``IndexBatches``, with the data module's ``steps_per_epoch``), the trainer's gradient clipping,
one optimizer step per batch and an EMA update after each; the shuffling seeds are the refits'
own, so a refit with the run's own budget is a refit like another, not the run's own round. They
train in float32 on ``--device``: a config's mixed precision is not applied.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_curate.data.blending import IndexBatches
from lightning_curate.diagnostics.common import DiagnosticError, progress
from lightning_curate.experiments.config_keys import loop_entry
from lightning_curate.experiments.saved_run import load_run
from lightning_curate.loop import RetrainingLoop
from lightning_curate.store.rounds import RoundStore

__all__ = ["add_arguments", "gradient_clip", "load_round_start", "own_budget", "refit_gap", "run"]


def _retraining_loop(config: dict[str, Any]) -> Any:
    """The run's ``RetrainingLoop``, rebuilt from its config: the schedule the run followed."""
    return RetrainingLoop(**(loop_entry(config).get("init_args") or {}))


def load_round_start(run_dir: Path) -> tuple[Any, Any, dict[str, Any], dict[str, Any], int]:
    """The run's module and data module at the end of its last round, the checkpoint, the config, and ``t``.

    ``t`` is the round to refit: one past the last round the checkpoint's ``RetrainingLoop`` finished.
    """
    try:
        saved = load_run(run_dir)
    except FileNotFoundError as err:
        if "checkpoint" not in str(err):
            raise
        raise FileNotFoundError(f"{err}: RUN_DIR must be a run stopped at the end of the round before the one "
                                "to refit") from err
    config, state, checkpoint = saved.config, saved.state, saved.checkpoint
    module, datamodule = saved.module, saved.datamodule
    finished = [v["finished_rounds"] for v in state.get("callbacks", {}).values()
                if isinstance(v, dict) and "finished_rounds" in v]
    if not finished or not finished[0]:
        raise ValueError(f"checkpoint {checkpoint} has no finished round of a RetrainingLoop")
    t = max(finished[0]) + 1
    loop = _retraining_loop(config)
    round_end = loop.last_epoch_of_round(t - 1)
    if state.get("epoch") != round_end:
        raise ValueError(f"checkpoint {checkpoint} was saved at epoch {state.get('epoch')}, not at the end of round "
                         f"{t - 1} (epoch {round_end}): refits must start from a round's start (save with "
                         "RoundCheckpoint, as the shipped configs do, and stop the run at a round's end)")
    if loop.init != "warm":
        raise ValueError(f"{run_dir / 'config.yaml'}: init: {loop.init!r}; only warm rounds (the default) "
                         "can be refitted from the run's state")
    store = RoundStore(run_dir / "rounds")
    if datamodule.policy == "replace" and not store.has(t - 1) and datamodule.real_fraction < 1:
        raise ValueError(f"{run_dir}: the round store has no round {t - 1}, the curated set round {t} trains on")
    datamodule.attach(store, lambda epoch: t)
    check = getattr(module.reward, "check", None)
    if callable(check):  # a classifier reward whose weights are missing: say so before any training
        check()
    return module, datamodule, state, config, t


def refit_gap(module: Any, optimizer_state: Optional[dict], data: torch.Tensor, round_idx: int, *, steps: int,
              batch_size: int, seed: int, n: int, train_mean: float, steps_per_epoch: Optional[int] = None,
              clip: Optional[tuple[float, str]] = None) -> dict[str, float]:
    """Refit ``module``'s generator on ``data`` for ``steps`` optimizer steps of ``batch_size`` rows, then the gap.

    Batches are the loop's (``IndexBatches``: one seeded pass an epoch, or ``steps_per_epoch``
    full batches), with the shuffling seed ``seed``; ``clip`` is the trainer's
    ``(gradient_clip_val, gradient_clip_algorithm)``. The module's weights (live, EMA) and
    optimizer moments are restored afterwards, so refits of one round all start from the same
    state. Every refit samples ``n`` points from the same source noise (seed 0): common random
    numbers across budgets and seeds.
    """
    generator = module.generator
    saved = {k: v.detach().clone() for k, v in generator.state_dict().items()}
    optimizer = module.configure_optimizers()
    if optimizer_state is not None:
        # A copy: load_state_dict keeps the given tensors, and the steps would update them in place.
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    torch.manual_seed(seed)
    generator.train()
    generator.start_round(round_idx)
    start, done, epoch = time.perf_counter(), 0, 0
    params = [p for p in generator.parameters() if p.requires_grad]
    try:
        while done < steps:
            for batch in IndexBatches(data, batch_size, seed, epoch=epoch, num_batches=steps_per_epoch):
                loss = generator.loss(batch)
                optimizer.zero_grad()
                loss.backward()
                if clip is not None and clip[1] == "value":
                    torch.nn.utils.clip_grad_value_(params, clip[0])
                elif clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip[0])
                optimizer.step()
                generator.update_ema()
                done += 1
                if done == steps:
                    break
            epoch += 1
        seconds = time.perf_counter() - start
        samples = generator.sample(n, generator=torch.Generator().manual_seed(0))
        mean = module.mean_score(samples, round_idx)
    finally:
        generator.load_state_dict(saved)
    return {"steps": steps, "batch_size": batch_size, "seed": seed, "reward_mean": mean,
            "learner_gap": mean - train_mean, "train_seconds": seconds}


def own_budget(datamodule: Any, config: dict[str, Any], n_train: int) -> tuple[int, int]:
    """The run's optimizer steps and batch size per curated round, from its config (one process)."""
    per_epoch = datamodule.steps_per_epoch or math.ceil(n_train / datamodule.batch_size)
    return _retraining_loop(config).epochs_per_round * per_epoch, int(datamodule.batch_size)


def gradient_clip(config: dict[str, Any]) -> Optional[tuple[float, str]]:
    """The trainer's ``(gradient_clip_val, gradient_clip_algorithm)``, or ``None`` without clipping."""
    trainer = config.get("trainer") or {}
    value = trainer.get("gradient_clip_val")
    if value is None or float(value) <= 0:
        return None
    return float(value), str(trainer.get("gradient_clip_algorithm") or "norm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diagnose budget``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run stopped at the end of round t - 1 (refits round t)")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="optimizer steps of the refitted round (default: the run's own and twice it)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="batch sizes (default: the run's own and twice it)")
    parser.add_argument("--seeds", type=int, default=3, help="refits per budget, each with its own seed (default 3)")
    parser.add_argument("-n", type=int, default=20000, help="samples scored per refit (default 20000)")
    parser.add_argument("--device", default="cpu", help="where the refits train (default cpu)")
    parser.add_argument("--json", action="store_true", help="also print every refit as one JSON line")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Refit the round at every budget, print the table (and ``--json``); 0 on success."""
    for name, values in (("--steps", args.steps), ("--batch-sizes", args.batch_sizes)):
        if values is not None and any(v < 1 for v in values):
            parser.error(f"{name} must be positive ints, got {values}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.n < 2:
        parser.error(f"-n must be >= 2, got {args.n}")
    try:
        module, datamodule, state, config, t = load_round_start(args.run_dir)
        data = datamodule.dataset_for_round(t).tensors[0]
    except (FileNotFoundError, ValueError) as err:  # these name the file
        raise DiagnosticError(str(err)) from err
    except Exception as err:  # a broken run directory (the store's errors included): say what, not a traceback
        raise DiagnosticError(f"{args.run_dir}: {err}") from err
    generator = module.generator
    if not all(hasattr(generator, a) for a in ("loss", "update_ema", "start_round", "sample")):
        raise DiagnosticError(f"{args.run_dir}: the generator ({type(generator).__name__}) has no loss, update_ema, "
                              "start_round and sample to refit with")
    torch.set_num_threads(int(config.get("torch_num_threads") or torch.get_num_threads()))
    module.to(args.device)
    data = data.to(args.device)
    train_mean = module.mean_score(data, t)
    own_steps, own_batch = own_budget(datamodule, config, data.shape[0])
    steps = args.steps or [own_steps, 2 * own_steps]
    batches = args.batch_sizes or [own_batch, 2 * own_batch]
    optimizer_state = (state.get("optimizer_states") or [None])[0]
    print(f"{args.run_dir}: refitting round {t} on its {data.shape[0]} training samples (mean reward "
          f"{train_mean:+.5f}), {args.seeds} seed(s) per budget, {args.n} samples each", flush=True)
    refits = []
    with progress(len(steps) * len(batches) * args.seeds, "budget: refits", "refit") as bar:
        for n_steps in steps:
            for batch in batches:
                for seed in range(args.seeds):
                    refits.append(refit_gap(module, optimizer_state, data, t, steps=n_steps, batch_size=batch,
                                            seed=seed, n=args.n, train_mean=train_mean,
                                            steps_per_epoch=datamodule.steps_per_epoch, clip=gradient_clip(config)))
                    bar.update()
    print(_table(refits, steps, batches, (own_steps, own_batch)))
    print(f"gap: a refit's mean reward minus its training set's ({train_mean:+.5f}); * the run's own budget "
          f"({own_steps} steps of {own_batch})")
    if args.json:
        print(json.dumps({"round": t, "training_set_reward_mean": train_mean, "refits": refits}))
    return 0


def _table(refits: list[dict[str, float]], steps: list[int], batches: list[int], own: tuple[int, int]) -> str:
    lines = [f"{'':1}{'steps':>7} {'batch':>6} {'samples':>9} {'gap of each seed':>30} {'mean':>9} {'spread':>8} "
             f"{'train s':>8}"]
    for n_steps in steps:
        for batch in batches:
            rows = [r for r in refits if r["steps"] == n_steps and r["batch_size"] == batch]
            gaps = [r["learner_gap"] for r in rows]
            spread = statistics.stdev(gaps) if len(gaps) > 1 else math.nan
            mark = "*" if (n_steps, batch) == own else " "
            each = ", ".join(f"{g:+.5f}" for g in gaps)
            lines.append(f"{mark}{n_steps:7d} {batch:6d} {n_steps * batch:9d} {each:>30} "
                         f"{statistics.fmean(gaps):+9.5f} {spread:8.5f} "
                         f"{statistics.fmean(r['train_seconds'] for r in rows):8.2f}")
    return "\n".join(lines)
