"""BlendingDataModule: real data blended with the store's curated rounds, per policy."""

import types

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_curate.data.blending import BlendingDataModule, IndexBatches
from lightning_curate.data.toy2d import Toy2D
from lightning_curate.store import rounds as store_mod
from lightning_curate.store.rounds import RoundStore, StoreError

SYN_BASE = 1000.0  # synthetic rows are >= 1000 in value; mog8 real points lie within radius ~6



def synthetic_round(t: int, n: int) -> torch.Tensor:
    """Rows that say where they come from: ``x[:, 0] = 1000 (t + 1) + i``."""
    tag = SYN_BASE * (t + 1) + torch.arange(n, dtype=torch.float32)
    return torch.stack([tag, -tag], dim=1)


def make_store(tmp_path, sizes):
    store = RoundStore(tmp_path / "rounds")
    for t, n in enumerate(sizes):
        store.write(t, {"x": synthetic_round(t, n)}, {"note": f"round {t}"})
    return store


def make_dm(store=None, round_of_epoch=lambda epoch: epoch, num_train=64, **kwargs):
    kwargs.setdefault("batch_size", 8)
    dm = BlendingDataModule(Toy2D(name="mog8", num_train=num_train, num_heldout=8), **kwargs)
    if store is not None:
        dm.attach(store, round_of_epoch)
    return dm


def split(data: torch.Tensor):
    """(real rows, synthetic (round, index) pairs) of a blended training set."""
    is_syn = data[:, 0] >= SYN_BASE
    syn = data[is_syn]
    tags = syn[:, 0].round().long()
    pairs = sorted(zip((tags // 1000 - 1).tolist(), (tags % 1000).tolist()))
    return data[~is_syn], pairs


def sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order, to compare two sets of rows."""
    x = x[torch.argsort(x[:, 1], stable=True)]
    return x[torch.argsort(x[:, 0], stable=True)]


def assert_rows_are_distinct_real(real_rows, real_train):
    # Each row is a row of the real training set, and no row is used twice.
    matches = (real_rows[:, None, :] == real_train[None, :, :]).all(dim=-1)
    assert bool(matches.any(dim=1).all())
    assert bool((matches.sum(dim=0) <= 1).all())
    assert torch.unique(real_rows, dim=0).shape[0] == real_rows.shape[0]


def test_round_zero_is_all_real(tmp_path):
    store = make_store(tmp_path, [8])
    dm = make_dm(store, lambda epoch: 0, real_fraction=0.0)  # rho only applies from round 1
    dm.trainer = types.SimpleNamespace(current_epoch=0)
    loader = dm.train_dataloader()
    data = loader.dataset.tensors[0]
    real, syn = split(data)
    assert syn == []
    assert torch.equal(sorted_rows(data), sorted_rows(dm.real.train))
    assert dm.real.train.shape == (64, 2)
    assert dm.composition[0] == {"n_real": 64, "n_synthetic": 0, "real_fraction": 1.0}


def test_round_zero_needs_no_store():
    dm = make_dm(real_fraction=0.0)
    assert dm.trainer is None
    data = dm.train_dataloader().dataset.tensors[0]
    assert data.shape == (64, 2)
    assert dm.composition[0]["n_synthetic"] == 0


def test_later_round_without_store_is_a_clear_error():
    dm = make_dm(real_fraction=0.0)
    with pytest.raises(RuntimeError, match="no round store"):
        dm.dataset_for_round(1)


def test_replace_uses_only_the_previous_round(tmp_path):
    store = make_store(tmp_path, [8, 9, 10])
    dm = make_dm(store, policy="replace", real_fraction=0.0)
    for t in (1, 2, 3):
        data = dm.dataset_for_round(t).tensors[0]
        real, pairs = split(data)
        assert real.shape[0] == 0
        n_prev = (8, 9, 10)[t - 1]
        assert pairs == [(t - 1, i) for i in range(n_prev)]
        assert torch.equal(sorted_rows(data), sorted_rows(synthetic_round(t - 1, n_prev)))
        assert dm.composition[t] == {"n_real": 0, "n_synthetic": n_prev, "real_fraction": 0.0}


def test_accumulate_uses_all_earlier_rounds(tmp_path):
    store = make_store(tmp_path, [8, 9, 10, 11])  # round 3 exists but must not be used by round 3
    dm = make_dm(store, policy="accumulate", real_fraction=0.0)
    data = dm.dataset_for_round(3).tensors[0]
    _, pairs = split(data)
    assert pairs == [(t, i) for t, n in enumerate((8, 9, 10)) for i in range(n)]
    assert dm.composition[3] == {"n_real": 0, "n_synthetic": 27, "real_fraction": 0.0}
    data1 = dm.dataset_for_round(1).tensors[0]
    assert split(data1)[1] == [(0, i) for i in range(8)]


def test_accumulate_subsample_caps_and_is_deterministic(tmp_path):
    store = make_store(tmp_path, [8, 8, 8])
    dm = make_dm(store, policy="accumulate_subsample", synthetic_size=10, real_fraction=0.0)
    data = dm.dataset_for_round(3).tensors[0]
    _, pairs = split(data)
    assert len(pairs) == 10 and len(set(pairs)) == 10  # 10 distinct rows ...
    assert all(0 <= t <= 2 and 0 <= i < 8 for t, i in pairs)  # ... of the 24 curated so far
    assert len({t for t, _ in pairs}) > 1  # drawn from the whole pool, not a prefix of round 0
    assert dm.composition[3]["n_synthetic"] == 10

    again = make_dm(store, policy="accumulate_subsample", synthetic_size=10, real_fraction=0.0)
    assert torch.equal(again.dataset_for_round(3).tensors[0], data)
    other = make_dm(store, policy="accumulate_subsample", synthetic_size=10, real_fraction=0.0, seed=1)
    assert split(other.dataset_for_round(3).tensors[0])[1] != pairs

    # A pool no larger than the cap is kept whole.
    assert split(dm.dataset_for_round(1).tensors[0])[1] == [(0, i) for i in range(8)]


def test_accumulate_subsample_default_size_is_one_round(tmp_path):
    store = make_store(tmp_path, [8, 8, 6])
    dm = make_dm(store, policy="accumulate_subsample", real_fraction=0.0)
    _, pairs = split(dm.dataset_for_round(3).tensors[0])
    assert len(pairs) == 6 and len(set(pairs)) == 6  # the size of round 2, the previous one


def test_half_real_gives_equal_counts(tmp_path):
    store = make_store(tmp_path, [16])
    dm = make_dm(store, policy="replace", real_fraction=0.5)
    data = dm.dataset_for_round(1).tensors[0]
    real, pairs = split(data)
    assert pairs == [(0, i) for i in range(16)]
    assert real.shape == (16, 2)
    assert_rows_are_distinct_real(real, dm.real.train)
    assert dm.composition[1] == {"n_real": 16, "n_synthetic": 16, "real_fraction": 0.5}


def test_quarter_real_fraction_is_exact(tmp_path):
    store = make_store(tmp_path, [24])
    dm = make_dm(store, policy="replace", real_fraction=0.25)
    data = dm.dataset_for_round(1).tensors[0]
    real, pairs = split(data)
    assert real.shape[0] == 8 and len(pairs) == 24
    assert real.shape[0] / data.shape[0] == 0.25
    assert_rows_are_distinct_real(real, dm.real.train)
    assert dm.composition[1] == {"n_real": 8, "n_synthetic": 24, "real_fraction": 0.25}


@pytest.mark.parametrize("rho, n_syn_pool, expected_syn", [(0.5, 30, 10), (0.25, 100, 30)])
def test_small_real_set_subsamples_the_synthetic_part(tmp_path, rho, n_syn_pool, expected_syn):
    store = make_store(tmp_path, [n_syn_pool])
    dm = make_dm(store, policy="replace", real_fraction=rho, num_train=10)
    data = dm.dataset_for_round(1).tensors[0]
    real, pairs = split(data)
    assert torch.equal(sorted_rows(real), sorted_rows(dm.real.train))  # all 10 real rows, once each
    assert len(pairs) == expected_syn and len(set(pairs)) == expected_syn
    assert all(t == 0 and 0 <= i < n_syn_pool for t, i in pairs)
    assert real.shape[0] / data.shape[0] == rho
    assert dm.composition[1] == {"n_real": 10, "n_synthetic": expected_syn, "real_fraction": rho}


def test_real_fraction_one_trains_on_real_only(tmp_path):
    store = make_store(tmp_path, [8, 8])
    dm = make_dm(store, policy="accumulate", real_fraction=1.0)
    data = dm.dataset_for_round(2).tensors[0]
    real, pairs = split(data)
    assert pairs == []
    assert torch.equal(sorted_rows(data), sorted_rows(dm.real.train))
    assert dm.composition[2] == {"n_real": 64, "n_synthetic": 0, "real_fraction": 1.0}
    # The store is not even needed.
    empty = make_dm(RoundStore(tmp_path / "empty"), real_fraction=1.0)
    assert empty.dataset_for_round(5).tensors[0].shape == (64, 2)


def _epoch_order(dm, epoch):
    dm.trainer = types.SimpleNamespace(current_epoch=epoch)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert all(isinstance(b, torch.Tensor) for b in batches)  # whole batches, no collate
    assert all(b.shape[0] <= 8 for b in batches)
    return torch.cat(batches)


def test_shuffle_is_deterministic_per_epoch_and_differs_across_epochs(tmp_path):
    store = make_store(tmp_path, [16])
    schedule = lambda epoch: 0 if epoch < 2 else 1  # noqa: E731
    dm = make_dm(store, schedule, real_fraction=0.5)
    first = _epoch_order(dm, 3)
    again = _epoch_order(dm, 3)
    fresh = _epoch_order(make_dm(store, schedule, real_fraction=0.5), 3)
    assert torch.equal(first, again)
    assert torch.equal(first, fresh)
    # The loader serves round 1's set, shuffled.
    dataset = dm.dataset_for_round(1).tensors[0]
    assert torch.equal(sorted_rows(first), sorted_rows(dataset))
    assert not torch.equal(first, dataset)
    # Another epoch of the same round: same rows, another order.
    other = _epoch_order(dm, 4)
    assert torch.equal(sorted_rows(other), sorted_rows(first))
    assert not torch.equal(other, first)
    # The schedule picks the round from the trainer's epoch.
    early = _epoch_order(dm, 1)
    assert split(early)[1] == [] and early.shape == (64, 2)


def test_corrupted_round_raises_through_the_datamodule(tmp_path):
    store = make_store(tmp_path, [8, 8])
    samples = store.path(0) / store_mod.SINGLE_PART
    data = bytearray(samples.read_bytes())
    data[-20] ^= 0xFF
    samples.write_bytes(bytes(data))
    dm = make_dm(store, lambda epoch: 1, real_fraction=0.5)
    dm.trainer = types.SimpleNamespace(current_epoch=0)
    with pytest.raises(StoreError, match="checksum"):
        dm.train_dataloader()
    # Round 1 under replace reads round 0 only; round 2 needs the intact round 1 and works.
    ok = make_dm(store, lambda epoch: 2, real_fraction=0.5, policy="replace")
    ok.trainer = types.SimpleNamespace(current_epoch=0)
    assert split(ok.train_dataloader().dataset.tensors[0])[1] == [(1, i) for i in range(8)]


@pytest.mark.parametrize("key, value", [
    ("real_fraction", -0.1),
    ("real_fraction", 1.5),
    ("real_fraction", float("nan")),
    ("policy", "bogus"),
    ("batch_size", 0),
    ("synthetic_size", 0),
    ("num_workers", -1),
])
def test_bad_constructor_values(key, value):
    with pytest.raises(ValueError, match=key):
        BlendingDataModule(Toy2D(name="mog8", num_train=8, num_heldout=8), **{key: value})


@pytest.mark.parametrize("n, batch_size, world_size", [(37, 8, 1), (37, 8, 3), (5, 4, 4), (64, 64, 2), (3, 2, 5)])
def test_index_batches_are_a_dataloader_over_a_distributed_sampler(n, batch_size, world_size):
    # The oracle: what the DataLoader + DistributedSampler this replaces gave, batch for batch, every rank.
    data = torch.arange(n * 2, dtype=torch.float32).view(n, 2)
    for epoch in (0, 5):
        for rank in range(world_size):
            sampler = DistributedSampler(TensorDataset(data), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=1234)
            sampler.set_epoch(epoch)
            expected = [b[0] for b in DataLoader(TensorDataset(data), batch_size=batch_size, sampler=sampler)]
            got = list(IndexBatches(data, batch_size, seed=1234, epoch=epoch, rank=rank, world_size=world_size))
            assert len(got) == len(expected) == len(IndexBatches(data, batch_size, 1234, epoch, rank, world_size))
            assert all(torch.equal(g, e) for g, e in zip(got, expected))


def test_index_batches_shard_the_rows_between_ranks():
    data = torch.arange(12, dtype=torch.float32).view(12, 1)
    shards = [torch.cat(list(IndexBatches(data, 5, seed=0, epoch=2, rank=r, world_size=3))) for r in range(3)]
    assert sorted(torch.cat(shards).view(-1).tolist()) == list(range(12))


@pytest.mark.parametrize("steps_per_epoch", [None, 5])
def test_batch_size_is_the_global_batch_split_over_the_ranks(steps_per_epoch):
    """Under DDP the step k of every rank together is the one-process step k: same steps, same samples."""
    dm = make_dm(num_train=60, steps_per_epoch=steps_per_epoch)

    def steps(rank, world_size):
        dm.trainer = types.SimpleNamespace(current_epoch=1, global_rank=rank, world_size=world_size)
        return list(dm.train_dataloader())

    whole, ranks = steps(0, 1), [steps(r, 2) for r in range(2)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == (steps_per_epoch or 8)  # 60 rows, batches of 8
    for x, x0, x1 in zip(whole, *ranks):
        assert x0.shape[0] == x1.shape[0] == x.shape[0] // 2
        assert torch.equal(sorted_rows(x), sorted_rows(torch.cat([x0, x1])))
    with pytest.raises(ValueError, match=r"batch_size \(8\) is the global batch and must divide evenly over the 3 "):
        steps(0, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"), (dict(world_size=0), "world_size"), (dict(rank=-1), "rank"),
    (dict(rank=2, world_size=2), "rank must be < world_size"),
])
def test_index_batches_bad_arguments(kwargs, match):
    args = dict(data=torch.zeros(4, 2), batch_size=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        IndexBatches(**args)
    with pytest.raises(ValueError, match="at least one row"):
        IndexBatches(torch.zeros(0, 2), 2, 0)


def test_a_fixed_step_budget_gives_full_batches_from_consecutive_permutations():
    from lightning_curate.data.blending import IndexBatches

    data = torch.arange(10.0).unsqueeze(1)
    batches = list(IndexBatches(data, batch_size=4, seed=3, epoch=2, num_batches=7))
    assert len(batches) == 7 and all(b.shape == (4, 1) for b in batches)
    drawn = torch.cat(batches)[:, 0].long()
    # The oracle: the same generator's permutations, one after another.
    gen = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randperm(10, generator=gen) for _ in range(3)])[:28]
    assert torch.equal(drawn, expected)
    # Each block of 10 draws is a permutation: every row once per pass, never a row twice within one.
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:20].tolist()) == list(range(10))
    # Two ranks split the same budget between them, disjoint and together the one-process stream.
    r0 = torch.cat(list(IndexBatches(data, 4, seed=3, epoch=2, rank=0, world_size=2, num_batches=7)))[:, 0]
    r1 = torch.cat(list(IndexBatches(data, 4, seed=3, epoch=2, rank=1, world_size=2, num_batches=7)))[:, 0]
    gen = torch.Generator().manual_seed(5)
    stream = torch.cat([torch.randperm(10, generator=gen) for _ in range(6)])[:56]
    assert torch.equal(r0.long(), stream[0::2]) and torch.equal(r1.long(), stream[1::2])


def test_steps_per_epoch_is_checked():
    with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1, got 0"):
        BlendingDataModule(Toy2D("mog8", num_train=16, num_heldout=8), steps_per_epoch=0)


@pytest.mark.parametrize("group, num_batches", [(3, None), (4, None), (2, 7), (50, None)])
def test_grouped_batches_are_the_same_batches_in_lists(group, num_batches):
    """group > 1 hands over lists of consecutive batches: flattened, exactly the ungrouped epoch."""
    data = torch.arange(46 * 2, dtype=torch.float32).view(46, 2)
    plain = list(IndexBatches(data, 4, seed=9, epoch=3, num_batches=num_batches))
    grouped_batches = IndexBatches(data, 4, seed=9, epoch=3, num_batches=num_batches, group=group)
    groups = list(grouped_batches)
    assert len(groups) == len(grouped_batches) == -(-len(plain) // group)
    assert all(isinstance(g, list) for g in groups)
    assert [len(g) for g in groups[:-1]] == [group] * (len(groups) - 1) and 1 <= len(groups[-1]) <= group
    flat = [b for g in groups for b in g]
    assert len(flat) == len(plain) and all(torch.equal(a, b) for a, b in zip(flat, plain))
    with pytest.raises(ValueError, match="group"):
        IndexBatches(data, 4, seed=9, group=0)


def test_one_loader_a_round_reshuffled_every_epoch(tmp_path, monkeypatch):
    """Lightning asks for a loader at each round's first epoch only, and the loader's order in every
    epoch is the one a loader built for that epoch would give (seed + epoch)."""
    import lightning as L

    from lightning_curate.loop import RetrainingLoop
    from lightning_curate.loop.curation_module import CurationModule
    from lightning_curate.models import FlowMatching, MLPVelocity
    from lightning_curate.rewards import ClippedDistanceReward

    built, passes = [], []
    original_loader, original_iter = BlendingDataModule.train_dataloader, IndexBatches.__iter__

    def loader(self):
        built.append(self.trainer.current_epoch)
        return original_loader(self)

    def iterate(self):
        passes.append((id(self), self.epoch, self.indices()))
        return original_iter(self)

    monkeypatch.setattr(BlendingDataModule, "train_dataloader", loader)
    monkeypatch.setattr(IndexBatches, "__iter__", iterate)
    torch.manual_seed(0)
    model = CurationModule(FlowMatching(MLPVelocity(2, 16, 1), [2], steps=2, ema_decay=0.0),
                           ClippedDistanceReward(dataset="mog8", targets=[0]), num_slots=64, num_candidates=2)
    data = BlendingDataModule(Toy2D("mog8", num_train=256, num_heldout=64), batch_size=64, seed=5)
    loop = RetrainingLoop(rounds=2, epochs_per_round=3, initial_epochs=2, plots=False)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[loop], accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, data)
    assert built == [0, 2, 5]  # round 0 is epochs 0-1, round 1 epochs 2-4, round 2 epochs 5-7
    # Lightning may iterate a new loader once more while it sets it up: one loader per round all the same.
    loader_of = {epoch: loader_id for loader_id, epoch, _ in passes}
    assert sorted(loader_of) == list(range(8))
    assert len({loader_of[e] for e in (0, 1)}) == len({loader_of[e] for e in (2, 3, 4)}) == 1
    assert len({loader_of[e] for e in (5, 6, 7)}) == 1 and len(set(loader_of.values())) == 3
    for _, epoch, order in passes:
        rows = 256 if epoch < 2 else 64
        fresh = IndexBatches(torch.zeros(rows, 2), 64, seed=data_seed(data), epoch=epoch).indices()
        assert torch.equal(order, fresh), epoch
    orders = {epoch: order for _, epoch, order in passes}
    assert not torch.equal(orders[2], orders[3])  # a new order each epoch of a round


def data_seed(data):
    from lightning_curate.utils.seeding import derive_seed

    return derive_seed(data.seed, "shuffle") % (1 << 31)


def test_index_batches_pass_lightnings_overfit_check():
    """``overfit_batches`` swaps a loader's ``sampler``; IndexBatches has none to swap (it takes the
    epoch through ``batch_sampler.sampler.set_epoch``), so the check leaves it alone."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from lightning.pytorch.trainer.connectors.data_connector import _resolve_overfit_batches
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities import CombinedLoader

    batches = IndexBatches(torch.arange(20.0)[:, None], 4, seed=1, epoch=0)
    _resolve_overfit_batches(CombinedLoader(batches), RunningStage.TRAINING)
    _set_sampler_epoch(batches, 3)
    assert batches.epoch == 3
    assert torch.equal(batches.indices(), IndexBatches(torch.zeros(20, 1), 4, seed=1, epoch=3).indices())
