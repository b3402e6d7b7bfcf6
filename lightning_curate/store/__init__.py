"""Storage of a run on disk: the append-only, checksummed round store, the run-directory lock and
the science settings every round records."""

from lightning_curate.store.lock import RunLock, RunLockError
from lightning_curate.store.rounds import RoundStore, StoredRound, StoreError
from lightning_curate.store.settings import SCIENCE_KEYS, SettingsMismatch

__all__ = ["SCIENCE_KEYS", "RoundStore", "RunLock", "RunLockError", "SettingsMismatch", "StoreError", "StoredRound"]
