"""Third-party console messages a user can do nothing about, silenced one by one.

Each entry is matched by its exact text and where it comes from, never by a whole
warning category, so any other warning still reaches the user. The causes that
are ours are fixed where they arise instead: ``max_epochs`` follows from the
round schedule (:mod:`lightning_curate.cli`), the logging interval fits any round
(:class:`~lightning_curate.loop.training.GeneratorTraining`), and the frozen
reward models are declared as such (:class:`~lightning_curate.loop.CurationModule`).
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["TIPS", "silence_third_party_noise"]

# Lightning's INFO lines on every run that say nothing about this run the summary does not:
# its cloud advertisements, the seed the config already names, the absent accelerators, and
# the normal end of the schedule (the loop sets max_epochs; the summary follows).
TIPS = ("💡 Tip: For seamless cloud", "Seed set to ", "GPU available: ", "TPU available: ", "HPU available: ",
        "`Trainer.fit` stopped: `max_epochs=")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(TIPS)


_TIP_FILTER = _DropTips()


def silence_third_party_noise() -> None:
    """Silence the messages listed here (idempotent).

    * Lightning's INFO lines in ``TIPS`` (its ``rank_zero`` and ``seed`` loggers), by their start;
    * torch's deprecation of ``isinstance(treespec, LeafSpec)``, which Lightning's own
      ``_pytree`` helper triggers on every run with torch >= 2.10 (fixed in Lightning, not here).
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        log = logging.getLogger(name)
        if _TIP_FILTER not in log.filters:
            log.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                            module=r"lightning\.pytorch\.utilities\._pytree")
