"""What a round's manifest records: the run's science settings and the round's own facts.

The science settings are what makes two runs the same experiment; every manifest
records them and their fingerprint, and a resume must keep them
(:mod:`lightning_curate.store.settings`, :mod:`lightning_curate.store.preflight`).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_curate.store.settings import fingerprint, init_args_of, normalise, qualname
from lightning_curate.utils.seeding import derive_seed

__all__ = ["recipe_settings", "round_manifest", "science_settings"]


def science_settings(pl_module: Any, datamodule: Any, schedule: Any, *, seed: int, init: str,
                     reward_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The run's science settings, normalised: the curation's, the data's, the reward's (its config
    from the CLI where given, else its class and arguments), the generator's class and the schedule's."""
    reward = pl_module.reward
    reward_config = reward_config or {"class_path": qualname(reward), "init_args": init_args_of(reward)}
    return normalise({
        "num_slots": pl_module.num_slots, "num_candidates": pl_module.num_candidates, "beta": pl_module.beta,
        "num_winners": pl_module.num_winners, "mode": pl_module.mode,
        "real_fraction": datamodule.real_fraction, "policy": datamodule.policy,
        "reward": reward_config, "generator": qualname(pl_module.generator),
        "seed": seed, "epochs_per_round": schedule.epochs_per_round, "initial_epochs": schedule.initial_epochs,
        "init": init, "steps_per_epoch": getattr(datamodule, "steps_per_epoch", None),
        **getattr(pl_module, "population_settings", dict)()})


def recipe_settings(pl_module: Any, datamodule: Any) -> dict[str, Any]:
    """The run's recipe settings, normalised: the optimizer's (``lr``, ``weight_decay``), the batch size, the
    data source's class and the generator's and the source's plain constructor arguments (``generator.ema_decay``,
    ``generator.solver``, ``source.name``...; see :data:`~lightning_curate.store.settings.RECIPE_KEYS`)."""
    source = getattr(datamodule, "source", None)
    recipe: dict[str, Any] = {"lr": getattr(pl_module, "lr", None),
                              "weight_decay": getattr(pl_module, "weight_decay", None),
                              "batch_size": getattr(datamodule, "batch_size", None)}
    recipe.update({f"generator.{k}": v for k, v in init_args_of(pl_module.generator).items()})
    if source is not None:
        recipe["source"] = qualname(source)
        recipe.update({f"source.{k}": v for k, v in init_args_of(source).items()})
    return normalise(recipe)


def round_manifest(pl_module: Any, datamodule: Any, round_idx: int, epoch: int, row: dict[str, Any], *,
                   seed: int, world_size: int, settings: Optional[dict[str, Any]],
                   settings_changed: Optional[dict[str, list]] = None, run_id: Optional[str] = None) -> dict[str, Any]:
    """The manifest of round ``round_idx`` (curated at the end of ``epoch``, training round ``round_idx + 1``):
    its curation settings and seeds, the run's settings, fingerprint and id, the phase timings and its row."""
    slots_of_round = getattr(pl_module, "slots_of_round", None)  # a num_slots_schedule's count for this round
    manifest = {
        "produced_by_round": round_idx, "trains_round": round_idx + 1, "epoch": epoch,
        "num_slots": slots_of_round(round_idx) if slots_of_round else pl_module.num_slots,
        "num_candidates": pl_module.num_candidates,
        "num_winners": pl_module.num_winners, "beta": pl_module.beta, "mode": pl_module.mode,
        "seed": seed, "round_seed": derive_seed(seed, "round", round_idx), "world_size": world_size,
        "real_fraction": datamodule.real_fraction, "policy": datamodule.policy,
        "settings": settings, "fingerprint": fingerprint(settings or {}), "run_id": run_id,
        "timings": dict(pl_module.timings), "row": row}
    if settings_changed:
        manifest["settings_changed"] = settings_changed
    return manifest
