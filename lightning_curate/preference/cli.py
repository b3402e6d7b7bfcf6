"""``lightning-curate-reward``: fit a Bradley-Terry reward on the choice logs of a run's rounds.

A round written with choice logging holds, for its first ``n`` slots, the tensors
``choice_candidates [n, K, ...]`` (every candidate shown), ``choice_index [n, m]``
(the kept ones, in choice order) and ``choice_slot [n]``. This command reads one
round or several, fits a reward model by maximum likelihood
(:func:`~lightning_curate.preference.fit_bradley_terry`: an MLP for vector
samples, the classifier CNN for images), and saves it with a report: the
held-out NLL and, when the true reward is known (a ``choice_rewards`` log, or
the reward of the run's ``config.yaml``, or ``--reward-class``), the Spearman
rank correlation with it on the held-out slots' candidates and the recovered
``beta`` (the slope of the fitted on the true reward; the loop's ``beta`` is in
the round manifest).

Example:
    lightning-curate-reward --round-dir runs/mog8/rounds/round_003 --out reward.pt
    lightning-curate-reward --round-dir runs/mog8/rounds --rounds 0-3 --out reward.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from lightning_curate.preference.bradley_terry import RewardMLP, fit_bradley_terry, score_candidates
from lightning_curate.preference.evaluate import recovered_scale, spearman
from lightning_curate.store import RoundStore, StoreError
from lightning_curate.utils.trust import check_config_classes, resolve_trusted_class

__all__ = ["build_model", "load_choice_logs", "load_reward_model", "main", "parse_rounds", "run"]

LOG_KEYS = ("choice_candidates", "choice_index", "choice_slot")
POPULATION_NOTE = ("the choices come from a population of curators: a single Bradley-Terry model recovers only "
                   "a mixture of their preferences (the best BT approximation of the population's choice law), "
                   "not any one curator's reward nor their weighted average")


def parse_rounds(spec: str, available: Sequence[int]) -> list[int]:
    """``"all"``, ``"3"``, ``"0-3"`` or ``"1,2,5"`` as a sorted list of stored round indices.

    Example:
        >>> parse_rounds("0-2,5", [0, 1, 2, 3, 5])
        [0, 1, 2, 5]
    """
    if spec.strip() == "all":
        wanted = set(available)
    else:
        wanted = set()
        try:
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                wanted.update(range(int(lo), int(hi or lo) + 1))
        except ValueError as err:
            raise ValueError(f"--rounds must be 'all', N, A-B or a comma list of those, got {spec!r}") from err
    missing = sorted(wanted - set(available))
    if missing:
        raise ValueError(f"--rounds asks for rounds {missing} that are not in the store (stored: {list(available)})")
    if not wanted:
        raise ValueError("--rounds selects no round")
    return sorted(wanted)


def _store_and_rounds(round_dir: Path, rounds: Optional[str]) -> tuple[RoundStore, list[int]]:
    name = round_dir.name
    if name.startswith("round_") and name[6:].isdigit():
        store, own = RoundStore(round_dir.parent), [int(name[6:])]
    else:
        store, own = RoundStore(round_dir), None
    available = store.rounds()
    if not available:
        raise StoreError(f"no complete round in {store.root}")
    if rounds is not None:
        return store, parse_rounds(rounds, available)
    if own is not None and own[0] not in available:
        raise StoreError(f"{round_dir} is not a complete round (no manifest.json)")
    return store, own if own is not None else available


def load_choice_logs(store: RoundStore, rounds: Sequence[int]) -> dict[str, Any]:
    """The choice logs of ``rounds``, concatenated.

    Returns ``candidates``, ``chosen`` (``[n]`` for one pick), ``rewards`` (``[n, K]`` or
    ``None``), ``round`` / ``slot`` per row and the ``manifests``.
    """
    cands: list[torch.Tensor] = []
    chosen: list[torch.Tensor] = []
    rewards: list[Optional[torch.Tensor]] = []
    origin: list[torch.Tensor] = []
    slots: list[torch.Tensor] = []
    manifests: list[dict[str, Any]] = []
    for t in rounds:
        record = store.read(t)
        tensors = record.tensors
        missing = [k for k in LOG_KEYS if k not in tensors]
        if missing:
            raise StoreError(f"round {t} in {store.root} has no choice logs (missing {', '.join(missing)}); "
                             "run the loop with choice logging on (log_choices) to record them")
        idx = _checked_logs(tensors, f"round {t} in {store.root}")
        if cands and (tuple(tensors["choice_candidates"].shape[1:]) != tuple(cands[0].shape[1:])
                      or idx.shape[1] != chosen[0].shape[1]):
            raise StoreError(f"round {t}: its logs have K, sample shape or picks different from round {rounds[0]}'s")
        cands.append(tensors["choice_candidates"].float())
        chosen.append(idx)
        rewards.append(tensors.get("choice_rewards"))
        origin.append(torch.full((idx.shape[0],), t, dtype=torch.long))
        slots.append(tensors["choice_slot"].long())
        manifests.append(record.manifest)
    picks = torch.cat(chosen)
    present = [r for r in rewards if r is not None]
    return {"candidates": torch.cat(cands), "chosen": picks[:, 0] if picks.shape[1] == 1 else picks,
            "rewards": torch.cat(present).float() if len(present) == len(rewards) else None,
            "round": torch.cat(origin), "slot": torch.cat(slots), "manifests": manifests}


def _checked_logs(tensors: dict[str, torch.Tensor], where: str) -> torch.Tensor:
    """The kept indices ``[n, m]`` of one round's choice logs, after checking every log's shape and values.

    The store's checksums prove a file is what was written, not that it makes sense: a log
    re-recorded with consistent checksums is checked here, so a forgery cannot index out of
    range or train on non-finite candidates.
    """
    cands, index, slot = tensors["choice_candidates"], tensors["choice_index"], tensors["choice_slot"]
    if cands.dim() < 3 or not cands.is_floating_point():
        raise StoreError(f"{where}: choice_candidates must be floating point [n, K, ...], "
                         f"got {cands.dtype} {list(cands.shape)}")
    n, k = int(cands.shape[0]), int(cands.shape[1])
    if n == 0 or k < 2:
        raise StoreError(f"{where}: choice_candidates must hold at least one slot of K >= 2 candidates, "
                         f"got {list(cands.shape)}")
    if not bool(torch.isfinite(cands).all()):
        raise StoreError(f"{where}: choice_candidates holds NaN or infinite values")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise StoreError(f"{where}: choice_index must be integer, got {index.dtype}")
    idx = index.long()
    idx = idx[:, None] if idx.dim() == 1 else idx
    if idx.dim() != 2 or idx.shape[0] != n or not 1 <= idx.shape[1] < k:
        raise StoreError(f"{where}: choice_index must be [{n}] or [{n}, m] with 1 <= m < K = {k}, "
                         f"got {list(index.shape)}")
    if bool(((idx < 0) | (idx >= k)).any()):
        raise StoreError(f"{where}: choice_index holds indices outside 0..{k - 1}")
    if idx.shape[1] > 1 and bool((idx.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise StoreError(f"{where}: choice_index repeats a candidate within a slot")
    if slot.dim() != 1 or slot.shape[0] != n or slot.is_floating_point() or bool((slot < 0).any()) \
            or int(slot.unique().numel()) != n:
        raise StoreError(f"{where}: choice_slot must be [{n}] distinct non-negative integers, "
                         f"got {slot.dtype} {list(slot.shape)}")
    rewards = tensors.get("choice_rewards")
    if rewards is not None and (tuple(rewards.shape) != (n, k) or not rewards.is_floating_point()
                                or not bool(torch.isfinite(rewards).all())):
        raise StoreError(f"{where}: choice_rewards must be finite floating point [{n}, {k}], "
                         f"got {rewards.dtype} {list(rewards.shape)}")
    return idx


def build_model(kind: str, sample_shape: Sequence[int], hidden: int = 64, depth: int = 2,
                seed: int = 0) -> tuple[nn.Module, dict]:
    """A reward network for samples of ``sample_shape`` and the spec that rebuilds it.

    ``kind``: ``"mlp"`` (:class:`RewardMLP` on the flattened sample), ``"cnn"`` (the
    classifier :class:`~lightning_curate.classifiers.SmallCNN`, logit difference as score, for
    ``[C, H, W]`` images) or ``"auto"`` (cnn for 3-D samples, mlp otherwise).
    """
    sample_shape = tuple(int(s) for s in sample_shape)
    if kind == "auto":
        kind = "cnn" if len(sample_shape) == 3 else "mlp"
    if kind == "mlp":
        spec = {"kind": "mlp", "in_features": math.prod(sample_shape), "hidden": hidden, "depth": depth}
    elif kind == "cnn":
        if len(sample_shape) != 3:
            raise ValueError(f"--model cnn needs image samples [C, H, W], got sample shape {list(sample_shape)}")
        spec = {"kind": "cnn", "in_channels": sample_shape[0], "image_size": sample_shape[1], "width": hidden}
    else:
        raise ValueError(f"--model must be one of ('auto', 'mlp', 'cnn'), got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _from_spec(spec), spec


def _from_spec(spec: dict) -> nn.Module:
    if spec["kind"] == "mlp":
        return RewardMLP(spec["in_features"], spec["hidden"], spec["depth"])
    from lightning_curate.classifiers import SmallCNN

    return _ScalarHead(SmallCNN(in_channels=spec["in_channels"], num_classes=2, width=spec["width"],
                                image_size=spec["image_size"]))


class _ScalarHead(nn.Module):
    """A two-class classifier as a scalar reward ``[N]``.

    The score is the difference of its two logits, a linear function of its features.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return logits[:, 1] - logits[:, 0]


def load_reward_model(path: str | Path) -> nn.Module:
    """Rebuild the reward model that ``lightning-curate-reward`` saved (eval mode)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = _from_spec(saved["architecture"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def _instantiate(class_path: str, init_args: Any, where: str, trusted_classes: Sequence[str]) -> nn.Module:
    """Build the reward ``class_path`` names: a package class or one the user trusts, never a file's choice."""
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}: the reward's init_args must be a mapping, got {init_args!r}")
    check_config_classes(init_args, where, trusted_classes)
    cls = resolve_trusted_class(class_path, where, trusted_classes, base=nn.Module)
    return cls(**init_args)


def _true_reward(args, store: RoundStore) -> Optional[nn.Module]:
    trusted = list(args.trusted_classes or [])
    if args.reward_class:  # named on the command line: the user trusts it
        return _instantiate(args.reward_class, json.loads(args.reward_args or "{}"), "--reward-class",
                            trusted + [args.reward_class])
    config = store.root.parent / "config.yaml"
    if args.no_config_reward or not config.is_file():
        return None
    import yaml

    with open(config) as fh:
        cfg = yaml.safe_load(fh) or {}
    spec = (((cfg.get("model") or {}).get("init_args") or {}).get("reward")) or {}
    if not isinstance(spec, dict) or "class_path" not in spec:
        return None
    return _instantiate(spec["class_path"], spec.get("init_args") or {}, str(config), trusted)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lightning-curate-reward", description=__doc__.split("\n\n")[0])
    ap.add_argument("--round-dir", required=True, type=Path,
                    help="a round directory (runs/x/rounds/round_003) or a run's rounds/ directory")
    ap.add_argument("--rounds", default=None, help="rounds of that store to pool: all, N, A-B or a comma list")
    ap.add_argument("--out", required=True, type=Path, help="where to save the fitted reward (.pt)")
    ap.add_argument("--model", default="auto", choices=("auto", "mlp", "cnn"))
    ap.add_argument("--hidden", type=int, default=64, help="MLP width, or the CNN's first-stage channels")
    ap.add_argument("--depth", type=int, default=2, help="MLP hidden layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--reward-class", default=None, help="class path of the true reward, for the report")
    ap.add_argument("--reward-args", default=None, help="its init args as JSON")
    ap.add_argument("--no-config-reward", action="store_true",
                    help="do not read the true reward from the run's config.yaml")
    ap.add_argument("--trusted-classes", nargs="+", default=None, metavar="CLASS_PATH",
                    help="classes outside lightning_curate that the run's config.yaml may build (your own reward); "
                         "any other class a file names is refused")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``lightning-curate-reward``): run the command, exit status 0."""
    run(argv)
    return 0


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the command; returns the report (also printed as JSON and saved in ``--out``)."""
    args = _parser().parse_args(argv)
    try:
        store, rounds = _store_and_rounds(args.round_dir, args.rounds)
        logs = load_choice_logs(store, rounds)
        # Checked before any fitting: a refused class costs nothing and writes nothing.
        reward = _true_reward(args, store) if logs["rewards"] is None else None
        cands, chosen = logs["candidates"], logs["chosen"]
        model, spec = build_model(args.model, cands.shape[2:], args.hidden, args.depth, args.seed)
        fit = fit_bradley_terry(cands, chosen, model, seed=args.seed, val_fraction=args.val_fraction,
                                max_epochs=args.max_epochs, batch_size=args.batch_size, lr=args.lr,
                                patience=args.patience)
    except (StoreError, ValueError) as err:
        print(f"lightning-curate-reward: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    eval_index = fit.val_index if fit.val_index.numel() else fit.train_index
    held = cands[eval_index]
    with torch.no_grad():
        fitted = score_candidates(fit.model, held).flatten()
        truth = logs["rewards"][eval_index].flatten() if logs["rewards"] is not None else None
        if truth is None and reward is not None:
            truth = score_candidates(reward.eval(), held).flatten().float()
    betas = sorted({m.get("beta") for m in logs["manifests"] if m.get("beta") is not None})
    picks = 1 if chosen.dim() == 1 else int(chosen.shape[1])
    report: dict[str, Any] = {
        "rounds": rounds, "slots": int(cands.shape[0]), "num_candidates": int(cands.shape[1]),
        "picks_per_slot": picks, "model": spec,
        "epochs": len(fit.history), "best_epoch": fit.best_epoch, "heldout_nll": fit.val_nll,
        "uniform_nll": float(sum(math.log(cands.shape[1] - j) for j in range(picks))),
        "heldout_slots": int(fit.val_index.numel()), "loop_beta": betas[0] if len(betas) == 1 else betas or None,
    }
    if truth is not None and float(truth.std()) > 0:
        slope, intercept = recovered_scale(fitted, truth)
        report.update(spearman=spearman(fitted, truth), recovered_beta=slope, intercept=intercept)
    if any(len(m.get("curators") or (m.get("settings") or {}).get("curators") or []) > 1 for m in logs["manifests"]):
        report["note"] = POPULATION_NOTE
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": fit.model.state_dict(), "architecture": spec, "report": report}, args.out)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
