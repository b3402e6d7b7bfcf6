"""What a run leaves for people: ``rounds.csv``, the end-of-run summary, and the fidelity guard.

Kept apart from the callback so the loop stays about rounds; every function
here reads finished rows only.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from lightning_curate import plots
from lightning_curate.loop.fidelity import (
    BAND_Z,
    FIDELITY_BAND,
    aggregate_fidelity,
    band_tally,
    mean_learner_gap,
    rounds_out_of_band,
)
from lightning_curate.models.generator import is_closed_form
from lightning_curate.utils.columns import LEAD, SHARE, Col, column_order, stderr
from lightning_curate.utils.table import write_csv

__all__ = ["PLOT_TIME_SHARE", "ROW_ORDER", "PlotBudget", "fidelity_advice", "log_row", "plot_run", "summary",
           "write_table"]

# Figures are redrawn after a round while drawing, this drawing included, costs at most this share of the run.
PLOT_TIME_SHARE = 0.05
# What the first drawing is expected to cost before one has been timed (seconds: two figures on a CPU).
FIRST_DRAW_SECONDS = 2.0

ROW_ORDER = list(LEAD)  # the columns rounds.csv starts with (lightning_curate.utils.columns.LEAD)


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write ``rows`` as a CSV atomically: the fixed columns first, then shares, then the rest."""
    write_csv(path, column_order(rows), rows)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(value: Any, width: int, spec: str = ".4f") -> str:
    return f"{value:>{width}{spec}}" if _finite(value) else f"{'-':>{width}}"


def _ratio_text(row: Mapping[str, Any], sep: str = "+-") -> str:
    """``1.42+-0.38``: a fidelity ratio with its standard error; ``-`` where there is none."""
    ratio, se = row.get(Col.REWARD_FIDELITY), row.get(stderr(Col.REWARD_FIDELITY))
    if not _finite(ratio):
        return "-"
    return f"{ratio:.2f}" + (f"{sep}{se:.2f}" if _finite(se) else "")


def _generator_advice(generator: Optional[nn.Module]) -> tuple[str, bool]:
    """What to change in ``generator`` to follow its data more closely, and whether it trains by gradient.

    Its own ``fidelity_hint`` when it has one (a class attribute or property of the
    :class:`~lightning_curate.models.Generator`), else advice for its kind.
    """
    hint = getattr(generator, "fidelity_hint", None) if generator is not None else None
    try:
        closed_form = generator is not None and is_closed_form(generator)
    except TypeError:
        closed_form = False
    name = type(generator).__name__ if generator is not None else "the generator"
    if isinstance(hint, str) and hint.strip():
        return " " + hint.strip(), not closed_form
    if closed_form:
        return (f" {name} is fitted in closed form (fit): a lag means fit does not reach the law of the set it is "
                "given; check that it converges (e.g. more EM iterations) and that the model can express the data "
                "(e.g. more mixture components)."), False
    return (f" Train {name} more per round (RetrainingLoop epochs_per_round, or a larger lr); if it averages its "
            "weights (update_ema), shorten that memory."), True


def fidelity_advice(rows: Sequence[Mapping[str, Any]], threshold: float,
                    generator: Optional[nn.Module] = None) -> Optional[str]:
    """A warning when the run's aggregate reward fidelity is below ``threshold``, naming the knobs to turn.

    The advice fits ``generator``: its own ``fidelity_hint`` if it has one (``FlowMatching`` names
    ``ema_decay`` and the solver check), else advice for a closed-form learner (``fit``) or a
    gradient-trained one.

    Returns:
        The warning, or ``None`` when the run is faithful enough, or when no round had a
        meaningful ratio.
    """
    aggregate = aggregate_fidelity(rows)
    if not math.isfinite(aggregate) or aggregate >= threshold:
        return None
    advice, by_gradient = _generator_advice(generator)
    gap, gap_se = mean_learner_gap(rows)
    shortfall = ""
    if math.isfinite(gap) and math.isfinite(gap_se) and gap < -3.0 * gap_se:
        shortfall = (f" Each curated round ended on average {-gap:.3g} (+-{gap_se:.1g}) reward units below the very "
                     "set it was trained on (learner_gap): a steady shortfall that weighs more as the predicted "
                     "moves shrink.")
        if by_gradient:
            shortfall += (" On the main job a larger batch or more optimizer steps per round narrowed it; "
                          "`lightning-curate diagnose budget RUN_DIR` measures that for this run.")
    out = [f"{r['round']} ({_ratio_text(r, ' +- ')})" for r in rounds_out_of_band(rows)]
    measured = (f" Measurably outside the band {FIDELITY_BAND[0]:g}-{FIDELITY_BAND[1]:g} (by more than {BAND_Z:g} "
                f"standard errors): round{'s' if len(out) > 1 else ''} {', '.join(out)}." if out else "")
    jitter = (" `lightning-curate diagnose jitter RUN_DIR` retrains a round several times: a lag that every refit "
              "shows is the learner's, not noise." if by_gradient else "")
    return (f"the generator moved {aggregate:.2f}x as far per round as the ideal learner predicts (aggregate "
            f"reward fidelity, threshold {threshold:g}): it does not follow the process the theory describes."
            f"{measured}{shortfall}{advice} Check round 0's p0_* columns for an under-fitted start.{jitter} "
            "See docs/THEORY.md section 5.")


def summary(rows: Sequence[Mapping[str, Any]], run_dir: Path, last_checkpoint: Optional[Path] = None,
            learner_noise: float = 0.0) -> str:
    """A short per-round table (reward, curated reward, real share, fidelity, learner gap, top shares) and
    the artifacts; ``learner_noise`` is named beside the fidelity when the noise rule counts it."""
    shares = SHARE.columns(rows[-1])
    top = sorted(shares, key=lambda c: -rows[-1][c])[:3]
    head = (f"{'round':>5} {'reward':>9} {'curated':>9} {'real%':>6} {'fidelity':>11} {'gap':>8} "
            + " ".join(f"{SHARE.name_of(c):>9}" for c in top))
    lines = ["", "Curated retraining: per-round summary", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r[Col.ROUND]:>5} {_cell(r.get(Col.REWARD_MEAN), 9)} {_cell(r.get(Col.CURATED_REWARD_MEAN), 9)} "
                     f"{100 * r.get(Col.REAL_FRACTION, 0):>6.1f} {_ratio_text(r):>11} "
                     f"{_cell(r.get(Col.LEARNER_GAP), 8)} " + " ".join(f"{100 * r[c]:>8.1f}%" for c in top))
    aggregate = aggregate_fidelity(rows)
    if math.isfinite(aggregate):
        noise = "sampling" + (f" + learner jitter {learner_noise:g}x" if learner_noise > 0 else "")
        lines.append(f"learner fidelity (mean over rounds whose predicted move is above noise): {aggregate:.2f}"
                     f" (1 = the ideal learner; noise: {noise})")
        tally = band_tally(rows)
        lines.append(f"against the faithful band {FIDELITY_BAND[0]:g}-{FIDELITY_BAND[1]:g}: {tally['in']} inside, "
                     f"{tally['near']} outside by at most {BAND_Z:g} standard errors, {tally['out']} further out"
                     + (f", {tally['?']} outside with no known error" if tally["?"] else ""))
    gap, gap_se = mean_learner_gap(rows)
    if math.isfinite(gap):
        lines.append(f"learner gap (a round's reward minus that of the set it trained on, mean over curated rounds):"
                     f" {gap:+.4f}{f' +- {gap_se:.4f}' if math.isfinite(gap_se) else ''} (0 = reproduces its data)")
    lines += ["", f"Artifacts in {run_dir}:",
              f"  rounds.csv            per-round metrics ({len(rows)} rows)",
              "  rounds/round_NNN/     curated data + manifest of each round"]
    for name, what in (("round_metrics.png", "reward, shares, fidelity, learner gap"),
                       ("samples.png", "model samples of every round")):
        if (run_dir / name).is_file():
            lines.insert(-1, f"  {name:<21} {what}")
    if (run_dir / "config.yaml").is_file():
        lines.append("  config.yaml           the full config of this run")
    if last_checkpoint is not None and last_checkpoint.is_file():
        name = os.path.relpath(last_checkpoint, run_dir)
        lines.append(f"  {name:<21} resume with --ckpt_path last")
    return "\n".join(lines + [""])


def log_row(loggers: Sequence[Any], row: Mapping[str, Any], step: int) -> None:
    """Send a round's numeric columns to every logger as ``round/<column>``, and flush them.

    Straight to the loggers, not through ``LightningModule.log``: there each of a row's
    ~100 columns would become a Lightning result that every later epoch resets and every
    checkpoint deep-copies. ``save()`` writes them now (a CSV logger would otherwise hold
    them until its next write), so a run killed in the next round keeps them.
    """
    metrics = {f"round/{k}": float(v) for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.save()


class PlotBudget:
    """Decides after which rounds the figures are redrawn, so drawing never weighs on a run.

    Redrawing every figure after every round grows with the rounds (one panel
    per round) and took about a third of the main job's time on a CPU. A round's
    figures are drawn mid-run only while the drawing so far plus the drawing
    now (expected to cost as much as the last one, ``first_cost`` before any)
    stays within ``share`` of the time since the budget started; the last
    round's always are. A short run is drawn once, at its end; a long one
    (rounds of minutes) after most rounds.

    Example:
        >>> budget = PlotBudget(share=0.1, first_cost=2.0)
        >>> budget.due(last=False)  # 2 s of drawing would be all of the run so far
        False
        >>> budget.due(last=True)
        True
    """

    def __init__(self, share: float = PLOT_TIME_SHARE, clock=time.perf_counter,
                 first_cost: float = FIRST_DRAW_SECONDS):
        self.share, self.clock = share, clock
        self.start, self.spent = clock(), 0.0
        self.expected = first_cost  # the next drawing's cost: the last one's, once one is timed

    def due(self, last: bool) -> bool:
        """Whether to draw now: always for the last round, else while this drawing keeps within the share."""
        return last or self.spent + self.expected <= self.share * (self.clock() - self.start)

    def draw(self, fn, *args: Any, **kwargs: Any) -> None:
        """Call ``fn`` and charge its time to the budget."""
        t0 = self.clock()
        try:
            fn(*args, **kwargs)
        finally:
            self.expected = self.clock() - t0
            self.spent += self.expected


def plot_run(rows: Sequence[Mapping[str, Any]], previews: Sequence[Optional[Tensor]], run_dir: Path, *,
             generator: nn.Module, reward: nn.Module, device: Any, datamodule: Any) -> None:
    """``round_metrics.png`` from the rows, and ``samples.png`` from every round's preview (2-D or images)."""
    plots.plot_round_metrics(rows, run_dir / "round_metrics.png")
    if not previews or any(p is None for p in previews):
        return
    shown = [p for p in previews if p is not None]
    shape = tuple(getattr(generator, "data_shape", ()))
    titles = [f"round {r[Col.ROUND]}" for r in rows]
    if shape == (2,):
        labels = [datamodule.label(p) for p in shown] if datamodule.class_names else None

        def reward_fn(x: Tensor) -> Tensor:
            return reward(x.to(device)).float().cpu()

        plots.plot_rounds_2d(shown, run_dir / "samples.png", reward_fn=reward_fn, titles=titles, labels=labels,
                             label_names=datamodule.class_names)
    elif len(shape) == 3:
        plots.plot_image_grid(shown, run_dir / "samples.png", titles=titles)
