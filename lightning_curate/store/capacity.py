"""What a run's rounds need on disk and in memory, checked against what there is before anything is built.

A round's size follows from a few settings: ``num_slots`` winners are stored, a curation chunk holds
``chunk_size x num_candidates`` candidates and their rewards at once, and the next round trains on the
stored winners in memory. A setting off by a few orders of magnitude (``num_slots 1e10``,
``num_candidates 1e6``) would otherwise fill the disk or be killed by the kernel (exit 137) after the
first round's training. :func:`check_capacity` refuses it up front, naming the key to change with the
bytes needed and the bytes there are.

The estimates are lower bounds (the generator's own working set is counted as a multiple of one block's
samples, :data:`SOLVER_MULTIPLE`): a refused run would certainly not fit, an accepted one may still be
short of memory if its generator needs much more.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["SOLVER_MULTIPLE", "CapacityError", "RoundSizes", "available_memory", "check_capacity", "free_disk",
           "human_bytes", "round_sizes"]

# The generator's working set while it samples one block (the solver's state, the velocity and its
# activations, an EMA copy), in multiples of the block's samples.
SOLVER_MULTIPLE = 4
_INDEX, _REWARD = 8, 4  # bytes of a stored slot index or label (int64) and of a reward (float32)


class CapacityError(ValueError):
    """A run whose rounds cannot fit on the disk or in memory; the message names the key to change."""


@dataclass(frozen=True)
class RoundSizes:
    """Bytes of one round: ``disk`` (its stored parts), ``chunk`` (the peak of one curation chunk, on the
    curating device), ``one_block_chunk`` (the same with the smallest chunk, one block of slots) and
    ``data`` (the winners a round trains on, of every round its pool gathers, in host memory)."""

    disk: int
    chunk: int
    one_block_chunk: int
    data: int


def human_bytes(n: float) -> str:
    """``1.5 GB``: decimal units, three significant figures.

    Example:
        >>> human_bytes(2.5e12)
        '2.5 TB'
    """
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover - the loop returns


def round_sizes(*, num_slots: int, num_candidates: int, num_winners: int, chunk_size: int, sample_numel: int,
                block: int, itemsize: int = 4, preview_size: int = 0, log_choices: int = 0, num_rewards: int = 1,
                labels: bool = False, world_size: int = 1, pool_rounds: int = 1) -> RoundSizes:
    """Estimate one round's bytes (see :class:`RoundSizes`).

    Args:
        num_slots, num_candidates, num_winners, chunk_size: the curation's settings (``N``, ``K``, ``m``).
        sample_numel: numbers in one sample (the product of the generator's ``data_shape``).
        block: slots drawn together (a chunk is a whole number of blocks, at least one).
        itemsize: bytes of one number of a sample (4: float32).
        preview_size, log_choices: the slots whose candidates' rewards, or whole choices, are kept too.
        num_rewards: rewards per candidate (1, or 1 + the curators of a population).
        labels: whether a label is kept per sample.
        world_size: ranks curating the round (a rank curates its share of the blocks).
        pool_rounds: rounds whose winners a round trains on at most (1 for ``policy: replace``; the
            number of rounds for the ``accumulate`` policies).

    Example:
        >>> sizes = round_sizes(num_slots=1000, num_candidates=4, num_winners=1, chunk_size=512,
        ...                     sample_numel=2, block=512)
        >>> sizes.disk, sizes.data
        (20000, 8000)
    """
    sample = sample_numel * itemsize
    label = _INDEX if labels else 0
    winners = num_slots * num_winners
    preview = min(preview_size, num_slots)
    logged = min(log_choices, num_slots)
    disk = (winners * (sample + _INDEX + _REWARD + label)
            + preview * (sample + _INDEX + num_candidates * (_REWARD * num_rewards + label))
            + logged * (num_candidates * (sample + _REWARD) + num_winners * _INDEX + _INDEX))
    blocks = math.ceil(num_slots / block)
    my_slots = min(num_slots, math.ceil(blocks / world_size) * block)

    def chunk_of(slots: int) -> int:
        candidates = slots * num_candidates
        block_candidates = min(slots, block) * num_candidates
        # the blocks' samples and their concatenation, the rewards (and labels), the solver on one block
        return (2 * candidates * sample + candidates * (_REWARD * num_rewards + label)
                + SOLVER_MULTIPLE * block_candidates * sample)

    chunk_slots = min(my_slots, max(1, math.ceil(chunk_size / block)) * block)
    return RoundSizes(disk=disk, chunk=chunk_of(chunk_slots), one_block_chunk=chunk_of(min(my_slots, block)),
                      data=winners * sample * pool_rounds)


def free_disk(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> Optional[int]:
    """Bytes of host memory this process can still take: the kernel's ``MemAvailable``, lowered to what
    the cgroup (a container's or a batch job's limit, where exit 137 comes from) has left; ``None`` when
    unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # "max" (no limit) reads as None
            found.append(max(0, limit - usage))
            break
    return min(found) if found else None


def check_capacity(sizes: RoundSizes, *, rounds_left: int, run_dir: str | os.PathLike, chunk_size: int,
                   block: int, disk_free: Optional[int], host_memory: Optional[int],
                   device_memory: Optional[int] = None, device: str = "cpu") -> None:
    """Refuse a run whose remaining rounds cannot fit, naming the key to change and both numbers.

    Args:
        sizes: the round's estimate (:func:`round_sizes`).
        rounds_left: rounds still to be stored.
        run_dir: where the rounds go (named in the message).
        chunk_size, block: the chunk setting and its granularity, to suggest a chunk that fits.
        disk_free, host_memory: free bytes (``None``: unknown, not checked).
        device_memory: free bytes of the curating device when it is not the host (a GPU).
        device: the curating device's name, for the message.

    Raises:
        CapacityError: on the first thing that cannot fit.

    Example:
        >>> sizes = round_sizes(num_slots=10**10, num_candidates=4, num_winners=1, chunk_size=512,
        ...                     sample_numel=2, block=512)
        >>> try:
        ...     check_capacity(sizes, rounds_left=1, run_dir="runs/x", chunk_size=512, block=512,
        ...                    disk_free=10**11, host_memory=None)
        ... except CapacityError as err:
        ...     print(str(err).split(". ")[0])
        num_slots: the round store needs about 200 GB on disk (1 round of 200 GB), but 100 GB are free in runs/x
    """
    if disk_free is not None and sizes.disk * rounds_left > disk_free:
        plural = "s" if rounds_left != 1 else ""
        raise CapacityError(
            f"num_slots: the round store needs about {human_bytes(sizes.disk * rounds_left)} on disk ({rounds_left} "
            f"round{plural} of {human_bytes(sizes.disk)}), but {human_bytes(disk_free)} are free in {run_dir}. "
            "Lower num_slots (or rounds, log_choices), or free space")
    if host_memory is not None and 2 * sizes.data > host_memory:
        raise CapacityError(
            f"num_slots: a round's training set (the winners it trains on, loaded with a copy) needs about "
            f"{human_bytes(2 * sizes.data)} of memory, but {human_bytes(host_memory)} is available. Lower num_slots "
            "(or num_winners)")
    memory = device_memory if device_memory is not None else host_memory
    where = f"{device} memory" if device_memory is not None else "memory"
    if memory is None or sizes.chunk <= memory:
        return
    if sizes.one_block_chunk > memory:
        raise CapacityError(
            f"num_candidates: one curation chunk of the smallest size ({block} slots) needs about "
            f"{human_bytes(sizes.one_block_chunk)} of {where}, but {human_bytes(memory)} is available. Lower "
            "num_candidates")
    fits = max(1, int(block * memory // sizes.one_block_chunk) // block) * block
    raise CapacityError(
        f"chunk_size: a curation chunk ({chunk_size} slots) needs about {human_bytes(sizes.chunk)} of {where}, but "
        f"{human_bytes(memory)} is available. Lower chunk_size (to {fits} or less), or num_candidates")
