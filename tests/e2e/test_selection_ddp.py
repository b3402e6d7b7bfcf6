"""A pool fraction on two processes (gloo, CPU): the ranks agree on the pool-wide threshold, and
their kept candidates together are the one-process round's."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_curate.loop import CurationModule, PoolFraction
from lightning_curate.models import FlowMatching, MLPVelocity
from lightning_curate.rewards.geometric import ClippedDistanceReward

NUM_SLOTS = 1300  # three blocks: rank 0 holds blocks 0 and 2, rank 1 block 1


def _module():
    torch.manual_seed(0)  # the same velocity weights on every rank
    return CurationModule(FlowMatching(MLPVelocity(2, 32, 2), [2], steps=4, ema_decay=0.0),
                          ClippedDistanceReward(dataset="mog8", targets=[0, 1]), num_slots=NUM_SLOTS,
                          num_candidates=3, chunk_size=512, preview_size=50, selection=PoolFraction("top", 0.15))


def _rank(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        parts = []
        _module().curate_round(0, seed=3, sink=lambda part, chunk: parts.append(part), rank=rank,
                               world_size=world_size)
        torch.save(parts, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_the_one_process_rounds_candidates(tmp_path):
    mp.start_processes(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")  # no re-import of torch and Lightning per rank
    parts = [p for r in range(2) for p in torch.load(tmp_path / f"rank{r}.pt")]
    slot = torch.cat([p["slot"] for p in parts])
    order = torch.sort(slot, stable=True).indices  # as the round store merges parts
    x = torch.cat([p["x"] for p in parts])[order]
    single = _module().curate_round(0, seed=3)
    assert torch.equal(x, single.tensors["x"])
    assert torch.equal(slot[order], single.tensors["slot"])
