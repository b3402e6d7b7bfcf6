"""The retraining loop: the LightningModule, the round callback and checkpoints, the round store, the progress bar."""

from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.loop.checkpoint import RoundCheckpoint
from lightning_curate.loop.curation_module import CurationModule, CurationOutcome
from lightning_curate.loop.curators import Curator
from lightning_curate.loop.progress import RoundProgressBar
from lightning_curate.loop.training import GeneratorTraining
from lightning_curate.store.rounds import RoundStore, StoredRound, StoreError

__all__ = ["CurationModule", "CurationOutcome", "Curator", "GeneratorTraining", "RetrainingLoop", "RoundCheckpoint",
           "RoundProgressBar", "RoundStore", "StoreError", "StoredRound"]
