"""Small shared pieces with no Lightning in them: seeding and argument checks."""

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

__all__ = ["MODES", "atom_indices", "check_beta", "check_choice", "check_float", "check_int", "check_vector",
           "derive_seed", "generator", "is_int", "seed_all", "write_csv"]
