"""Small shared pieces with no Lightning in them: seeding, argument checks, the round's column names,
and (in :mod:`~lightning_curate.utils.compat`) the one home of private Lightning and torch uses."""

from lightning_curate.utils.columns import Col, Family, column_order
from lightning_curate.utils.seeding import derive_seed, generator, seed_all
from lightning_curate.utils.table import write_csv
from lightning_curate.utils.validation import (
    MODES,
    atom_indices,
    check_beta,
    check_choice,
    check_float,
    check_int,
    check_vector,
    is_int,
)

__all__ = ["MODES", "Col", "Family", "atom_indices", "check_beta", "check_choice", "check_float", "check_int",
           "check_vector", "column_order", "derive_seed", "generator", "is_int", "seed_all", "write_csv"]
