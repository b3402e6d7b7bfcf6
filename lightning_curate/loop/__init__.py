"""The retraining loop, by responsibility.

* :class:`RetrainingLoop` (``callback``) drives the rounds inside ``Trainer.fit``; the round
  arithmetic is :class:`RoundSchedule`'s (``schedule``), the analysis and predictions of a round
  ``analysis``'s (with ``prediction``, ``fidelity`` and ``verdicts``), what is written for people
  ``writing``'s and ``report``'s, and a round's manifest ``manifest``'s;
* :class:`CurationModule` (``curation_module``, ``training``) trains the generator and curates its
  samples, one :class:`Curator` or a population of them (``curators``); what a round keeps is a
  :class:`SlotChoice` or a :class:`PoolFraction` (``selection``), a :class:`ManifoldProjection` may
  correct it before storage (``transforms``), and :class:`SlotSchedule` grows its budget (``schedule``);
* :class:`RoundCheckpoint` and :class:`RoundProgressBar` act at the rounds' ends;
* the round store (:class:`RoundStore`) is :mod:`lightning_curate.store`'s, re-exported here.
"""

from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.loop.checkpoint import RoundCheckpoint
from lightning_curate.loop.curation_module import CurationModule, CurationOutcome
from lightning_curate.loop.curators import Curator
from lightning_curate.loop.progress import RoundProgressBar
from lightning_curate.loop.schedule import RoundSchedule, SlotSchedule
from lightning_curate.loop.selection import PoolFraction, Selection, SlotChoice
from lightning_curate.loop.training import GeneratorTraining
from lightning_curate.loop.transforms import ManifoldProjection
from lightning_curate.store.rounds import RoundStore, StoredRound, StoreError

__all__ = ["CurationModule", "CurationOutcome", "Curator", "GeneratorTraining", "ManifoldProjection", "PoolFraction",
           "RetrainingLoop", "RoundCheckpoint", "RoundProgressBar", "RoundSchedule", "RoundStore", "Selection",
           "SlotChoice", "SlotSchedule", "StoreError", "StoredRound"]
