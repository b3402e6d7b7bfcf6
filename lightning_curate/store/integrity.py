"""A stored round's manifest checked against itself and against the data it describes.

The parts' checksums catch a changed file, but the manifest is plain JSON that an edit can change
without touching a part: its ``settings`` (what a resume compares), the curation keys it repeats at its
top level, and its ``row`` (what ``rounds.csv`` is rebuilt from). A resume would then compare against
settings the rounds were not made with, or publish a row the data do not support. These checks find
both, and name the manifest:

* the ``fingerprint`` must be the sha256 of the ``settings`` it fingerprints (and present beside them);
* a top-level key (``beta``, ``num_slots``...) must equal the same key of ``settings``;
* the ``row`` must describe its round: its ``round`` and ``epoch``, and its curated-reward mean and
  standard deviation must be those of the stored winners' rewards (to float32 precision); after a
  transform, its ``stored_reward_mean`` must be their mean.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from lightning_curate.store.settings import LEGACY_KEYS, fingerprint
from lightning_curate.utils.columns import Col

__all__ = ["ROW_TOLERANCE", "check_manifest_settings", "check_row"]

# The row's reward statistics are float32 values of running sums (float64, or float32 on devices without
# it): they agree with a recomputation to about 1e-7 of the rewards' scale, and an edit is far beyond
# this. The standard deviation, from a sum of squares, is compared on the scale of the mean too.
ROW_TOLERANCE = 1e-4


def check_manifest_settings(manifest: dict[str, Any], path: Path) -> list[str]:
    """Why the manifest's settings cannot be trusted (empty when they can): a missing or stale
    fingerprint, or a top-level key that disagrees with its settings."""
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        return []  # a manifest from before settings were recorded: its top-level keys are its settings
    problems = []
    recorded = manifest.get("fingerprint")
    if recorded is None:
        problems.append("its settings have no fingerprint")
    elif fingerprint(settings) != recorded:
        problems.append("its settings do not match its fingerprint")
    scheduled = settings.get("num_slots_schedule") is not None  # then the top-level num_slots is the round's own
    for key in LEGACY_KEYS:
        if key == "num_slots" and scheduled:
            continue
        if key in manifest and key in settings and manifest[key] != settings[key]:
            problems.append(f"its {key} ({manifest[key]!r}) differs from its settings' ({settings[key]!r})")
    return problems


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=ROW_TOLERANCE, abs_tol=ROW_TOLERANCE * scale) or (math.isnan(a) and math.isnan(b))


def check_row(manifest: dict[str, Any], tensors: dict[str, Tensor]) -> list[str]:
    """How the manifest's ``row`` disagrees with the round it describes (empty when it agrees)."""
    row = manifest.get("row")
    if not isinstance(row, dict):
        return []
    problems = []
    for key, expected in ((Col.ROUND, manifest.get("round")), (Col.EPOCH, manifest.get("epoch"))):
        if key in row and expected is not None and row[key] != expected:
            problems.append(f"its row's {key} is {row[key]!r}, the round's is {expected!r}")
    rewards = tensors.get("rewards")
    if rewards is None or rewards.numel() == 0:
        return problems
    values = rewards.double().reshape(-1)
    if "stored_reward_mean" in row:
        # A transform ran before storage: the stored rewards are the transformed samples', which the row's
        # stored_reward_mean describes (its curated_* columns describe the selection, before the transform).
        stats = {"stored_reward_mean": float(values.mean())}
    else:
        stats = {Col.CURATED_REWARD_MEAN: float(values.mean()),
                 Col.CURATED_REWARD_STD: float(values.std()) if values.numel() > 1 else 0.0}
    scale = max([1.0] + [abs(value) for value in stats.values()] + [float(values.std()) if values.numel() > 1 else 0.0])
    for key, actual in stats.items():
        stored = row.get(key)
        if isinstance(stored, (int, float)) and not _close(float(stored), actual, scale):
            problems.append(f"its row's {key} is {stored!r}, but the stored winners' rewards give {actual:.6g}")
    return problems
