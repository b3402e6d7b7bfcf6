"""Storage of a run on disk: the append-only, checksummed round store."""

from lightning_curate.store.rounds import RoundStore, StoredRound, StoreError

__all__ = ["RoundStore", "StoreError", "StoredRound"]
