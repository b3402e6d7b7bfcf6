"""CurationModule: training step, reward checks and one curation round (docs/THEORY.md section 1)."""

import math
import warnings

import pytest
import torch
from loop_helpers import assert_same_outcome, build_module
from torch import nn

from lightning_curate.data.toy2d import ModeAssigner, mode_names
from lightning_curate.rewards.geometric import ClippedDistanceReward

NUM_SLOTS = 600  # two blocks of slots (512 + 88): exercises the block boundary
K = 3
CLASS_NAMES = mode_names("mog8")



@pytest.fixture(scope="module")
def assigner():
    return ModeAssigner("mog8")


class Recorder(nn.Module):
    """Wraps a reward model and keeps every batch it scored and the rewards it gave."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs, self.outputs = [], []

    def forward(self, x):
        r = self.inner(x)
        self.inputs.append(x.clone())
        self.outputs.append(r.clone())
        return r

    def all_candidates(self):
        """Candidates ``[N, K, 2]`` and their rewards ``[N, K]``, slot by slot."""
        x = torch.cat(self.inputs)
        r = torch.cat(self.outputs)
        return x.view(-1, K, 2), r.view(-1, K)


class FixedReward(nn.Module):
    """A reward that returns whatever ``fn(x)`` says (for broken reward models)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class LearnedReward(nn.Module):
    """A reward model with parameters and dropout, like a real learned judge."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x)).squeeze(-1)


def clipped_reward():
    return ClippedDistanceReward(dataset="mog8", targets=[0, 1])


def build(reward=None, **kwargs):
    return build_module(reward if reward is not None else clipped_reward(),
                        **{"num_slots": NUM_SLOTS, "num_candidates": K, **kwargs})


def curate(module, assigner, seed=11, round_idx=1):
    return module.curate_round(round_idx, seed=seed, label_fn=assigner, class_names=CLASS_NAMES)


def test_curate_round_outputs(assigner):
    rec = Recorder(clipped_reward())
    module = build(rec)
    out = curate(module, assigner)
    t, row = out.tensors, out.row
    assert t["x"].shape == (NUM_SLOTS, 2) and t["x"].dtype == torch.float32
    assert t["rewards"].shape == (NUM_SLOTS,)
    assert t["labels"].shape == (NUM_SLOTS,) and t["labels"].dtype == torch.int64
    assert t["preview"].shape == (100, 2)

    cands, cand_r = rec.all_candidates()
    assert cands.shape == (NUM_SLOTS, K, 2)  # every candidate was scored exactly once

    # The stored rewards are exactly the reward of the stored samples.
    assert torch.equal(t["rewards"], clipped_reward()(t["x"]))
    # Each winner is one of its own slot's candidates, with that candidate's reward.
    match = (cands == t["x"][:, None, :]).all(dim=-1)  # [N, K]
    assert bool(match.any(dim=1).all())
    idx = match.float().argmax(dim=1)
    assert torch.equal(cand_r.gather(1, idx[:, None])[:, 0], t["rewards"])
    # The preview is the first candidate of each slot: i.i.d. model samples.
    assert torch.equal(t["preview"], cands[:100, 0])
    # Labels are the label function's labels of the winners.
    assert torch.equal(t["labels"], assigner(t["x"]))

    # The row: reward statistics over all candidates and over the winners.
    assert row["reward_mean"] == pytest.approx(cand_r.double().mean().item(), rel=1e-5)
    assert row["reward_std"] == pytest.approx(cand_r.double().std().item(), rel=1e-4)
    assert row["curated_reward_mean"] == pytest.approx(t["rewards"].double().mean().item(), rel=1e-5)
    assert row["curated_reward_std"] == pytest.approx(t["rewards"].double().std().item(), rel=1e-4)
    # Curation with beta > 0 raises the mean reward (by a wide margin at this seed).
    assert row["curated_reward_mean"] > row["reward_mean"] + 0.2
    # Selection entropy of softmax(beta r) per slot, normalised by log K.
    expected_entropy = (-(torch.softmax(cand_r.double(), 1) * torch.log_softmax(cand_r.double(), 1)).sum(1)
                        / math.log(K)).mean().item()
    assert row["selection_entropy"] == pytest.approx(expected_entropy, rel=1e-5)
    assert 0.0 < row["selection_entropy"] < 1.0

    # Shares: candidates' labels for the model, winners' labels for the curated data.
    model_counts = torch.bincount(assigner(cands.reshape(-1, 2)), minlength=8).double()
    curated_counts = torch.bincount(t["labels"], minlength=8).double()
    shares = [row[f"share_{n}"] for n in CLASS_NAMES]
    curated = [row[f"curated_share_{n}"] for n in CLASS_NAMES]
    assert shares == pytest.approx((model_counts / model_counts.sum()).tolist(), abs=1e-12)
    assert curated == pytest.approx((curated_counts / NUM_SLOTS).tolist(), abs=1e-12)
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    assert sum(curated) == pytest.approx(1.0, abs=1e-9)
    # Target modes 0 and 1 gain share under curation.
    assert row["curated_share_mode0"] + row["curated_share_mode1"] > row["share_mode0"] + row["share_mode1"]


def test_no_labels_without_label_fn():
    out = build().curate_round(0, seed=3)
    assert "labels" not in out.tensors
    assert not any(key.startswith("share_") for key in out.row)


def test_sample_distance_of_the_preview_to_a_reference():
    reference = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 4
    module = build()
    out = module.curate_round(0, seed=3)
    value = module.sample_distance(out.tensors["preview"], reference)
    assert math.isfinite(value) and value > 0
    # The distance of a set to itself is 0; the round's own row carries no distance (the loop adds it).
    assert module.sample_distance(reference, reference) == 0.0
    assert "sw_distance" not in out.row


def test_argmax_keeps_the_best_of_each_slot(assigner):
    rec = Recorder(clipped_reward())
    out = curate(build(rec, mode="argmax"), assigner)
    cands, cand_r = rec.all_candidates()
    best = cand_r.argmax(dim=1)  # first maximum: the lowest index wins ties
    assert torch.equal(out.tensors["rewards"], cand_r.amax(dim=1))
    assert torch.equal(out.tensors["x"], cands[torch.arange(NUM_SLOTS), best])


def test_softmax_does_not_always_keep_the_best(assigner):
    rec = Recorder(clipped_reward())
    out = curate(build(rec, mode="softmax", beta=1.0), assigner)
    _, cand_r = rec.all_candidates()
    assert bool((out.tensors["rewards"] < cand_r.amax(dim=1)).any())


def test_uniform_ignores_rewards(assigner):
    plain = curate(build(mode="uniform"), assigner)
    # The winners do not depend on the reward: a negated reward keeps the same samples.
    flipped = curate(build(FixedReward(lambda x: -clipped_reward()(x)), mode="uniform"), assigner)
    assert torch.equal(plain.tensors["x"], flipped.tensors["x"])
    assert plain.row["curated_reward_mean"] == pytest.approx(
        plain.tensors["rewards"].double().mean().item(), rel=1e-5)
    # ... whereas softmax does depend on it.
    soft = curate(build(mode="softmax", beta=2.0), assigner)
    soft_flipped = curate(build(FixedReward(lambda x: -clipped_reward()(x)), mode="softmax", beta=2.0), assigner)
    assert not torch.equal(soft.tensors["x"], soft_flipped.tensors["x"])


def test_two_winners_per_slot(assigner):
    rec = Recorder(clipped_reward())
    out = curate(build(rec, mode="argmax", num_winners=2), assigner)
    t = out.tensors
    assert t["x"].shape == (2 * NUM_SLOTS, 2)
    assert t["rewards"].shape == (2 * NUM_SLOTS,) and t["labels"].shape == (2 * NUM_SLOTS,)
    cands, cand_r = rec.all_candidates()
    # Slot by slot, the two best candidates, best first (stable order on ties).
    top2 = torch.sort(cand_r, dim=1, descending=True, stable=True).indices[:, :2]
    rows = torch.arange(NUM_SLOTS)[:, None]
    assert torch.equal(t["x"].view(NUM_SLOTS, 2, 2), cands[rows, top2])
    assert torch.equal(t["rewards"].view(NUM_SLOTS, 2), cand_r[rows, top2])

    soft = curate(build(num_winners=2), assigner)
    pair = soft.tensors["x"].view(NUM_SLOTS, 2, 2)
    assert not bool((pair[:, 0] == pair[:, 1]).all(dim=-1).any())  # two distinct candidates per slot


def test_same_seed_same_round_different_seed_differs(assigner):
    a = curate(build(), assigner, seed=11)
    b = curate(build(), assigner, seed=11)
    assert_same_outcome(a, b)
    c = curate(build(), assigner, seed=12)
    assert not torch.equal(a.tensors["x"], c.tensors["x"])
    assert not torch.equal(a.tensors["preview"], c.tensors["preview"])


def test_chunk_size_does_not_change_the_round(assigner):
    small = curate(build(chunk_size=512), assigner)
    odd = curate(build(chunk_size=700), assigner)
    large = curate(build(chunk_size=100000), assigner)
    assert_same_outcome(small, large)
    assert_same_outcome(odd, large)


def test_chunks_bound_the_reward_batch():
    rec = Recorder(clipped_reward())
    build(rec, chunk_size=512).curate_round(0, seed=1)
    assert [x.shape[0] for x in rec.inputs] == [512 * K, 88 * K]


@pytest.mark.parametrize("name, fn, pattern", [
    ("shape", lambda x: torch.zeros(x.shape[0], 1), r"round 7: .*shape \(1800, 1\) for 1800 samples"),
    ("short", lambda x: torch.zeros(x.shape[0] - 1), r"round 7: .*1800 samples"),
    ("not a tensor", lambda x: [0.0] * x.shape[0], r"round 7: .*list for 1800 samples"),
    ("nan", lambda x: torch.zeros(x.shape[0]).index_fill(0, torch.arange(5), math.nan),
     r"round 7: .*5 non-finite rewards .*out of 1800"),
    ("inf", lambda x: torch.zeros(x.shape[0]).index_fill(0, torch.tensor([3, 9]), math.inf),
     r"round 7: .*2 non-finite rewards .*out of 1800"),
    ("-inf", lambda x: torch.zeros(x.shape[0]).index_fill(0, torch.tensor([4]), -math.inf),
     r"round 7: .*1 non-finite rewards .*out of 1800"),
])
def test_bad_reward_model_is_an_error(name, fn, pattern):
    module = build(FixedReward(fn), chunk_size=100000)
    with pytest.raises(ValueError, match=pattern):
        module.curate_round(7, seed=0)


def test_score_returns_a_float_copy():
    module = build(FixedReward(lambda x: x[:, 0].double()))
    x = torch.randn(6, 2)
    r = module.score(x, 0)
    assert r.dtype == torch.float32 and r.shape == (6,)
    assert torch.equal(r, x[:, 0])
    r.add_(1.0)  # a normal tensor: editable outside inference mode


def test_mean_score_scores_a_set_in_chunks():
    calls = []

    def reward(x):
        calls.append(x.shape[0])
        return x[:, 0].double()

    module = build(FixedReward(reward))
    x = torch.arange(20.0).reshape(10, 2)
    assert module.mean_score(x, 0, chunk=4) == 9.0  # (0 + 2 + ... + 18) / 10
    assert calls == [4, 4, 2]
    with pytest.raises(ValueError, match="round 3: .*non-finite"):
        module.mean_score(x.index_fill(0, torch.tensor([9]), math.nan), 3, chunk=4)


@pytest.mark.parametrize("kwargs, key", [
    ({"num_candidates": 0}, "num_candidates"),
    ({"num_slots": 0}, "num_slots"),
    ({"num_winners": 0}, "num_winners"),
    ({"num_winners": 4, "num_candidates": 3}, "num_winners"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"preview_size": -1}, "preview_size"),
    ({"num_candidates": 2.0}, "num_candidates"),
    ({"beta": -1.0}, "beta"),
    ({"beta": math.nan}, "beta"),
    ({"beta": math.inf}, "beta"),
    ({"beta": True}, "beta"),
    ({"mode": "bogus"}, "mode"),
    ({"backend": "bogus"}, "backend"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
])
def test_constructor_errors(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build(**kwargs)


def test_training_step_returns_a_differentiable_finite_loss():
    module = build()
    batch = [torch.randn(16, 2, generator=torch.Generator().manual_seed(0)) * 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer warns
        loss = module.training_step(batch, 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.requires_grad
    loss.backward()
    grads = [p.grad for p in module.generator.parameters()]
    assert all(g is not None for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_training_logs_the_loss_on_logging_steps_and_the_weighted_epoch_mean(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    module = build()
    seen: list[tuple[float, int]] = []
    step = module.training_step

    def recording_step(batch, batch_idx):
        loss = step(batch, batch_idx)
        seen.append((float(loss), batch.shape[0]))
        return loss

    module.training_step = recording_step
    gen = torch.Generator().manual_seed(0)

    class Batches:  # an iterable of whole tensor batches, as BlendingDataModule serves them
        items = [torch.randn(n, 2, generator=gen) * 4 for n in (16, 16, 16, 16, 16, 5)]

        def __len__(self):
            return len(self.items)

        def __iter__(self):
            return iter(self.items)

    batches = Batches()
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="", version=""), log_every_n_steps=2,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=batches)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    step_rows = [r for r in rows if r.get("train/loss_step")]
    assert [int(r["step"]) for r in step_rows] == [1, 3, 5]  # steps 2, 4, 6 (0-based 1, 3, 5)
    for r in step_rows:
        assert float(r["train/loss_step"]) == pytest.approx(seen[int(r["step"])][0], rel=1e-6)
    epoch_rows = [r for r in rows if r.get("train/loss_epoch")]
    assert len(epoch_rows) == 1
    expected = sum(loss * n for loss, n in seen) / sum(n for _, n in seen)
    assert float(epoch_rows[0]["train/loss_epoch"]) == pytest.approx(expected, rel=1e-6)


def test_hook_name_bookkeeping_bypasses_module_registration_but_modules_still_register():
    module = build()
    module._current_fx_name = "training_step"
    assert module._current_fx_name == "training_step" and "_current_fx_name" in vars(module)
    module.extra = nn.Linear(2, 2)  # every other attribute still goes through nn.Module
    assert "extra" in dict(module.named_children())


def test_optimizer_is_multi_tensor_adamw_on_the_generator_only():
    module = build(LearnedReward(), lr=0.01, weight_decay=0.1)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"] is True
    assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.generator.parameters()}


def test_reward_model_is_a_frozen_judge():
    judge = LearnedReward()
    module = build(judge)
    assert not judge.training and not judge.dropout.training
    assert not any(p.requires_grad for p in judge.parameters())

    module.train()
    assert module.training and module.generator.training
    assert not judge.training and not judge.dropout.training
    # In eval mode the dropout is off: scoring the same batch twice agrees exactly.
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(module.score(x, 0), module.score(x, 0))

    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in module.generator.parameters()}
    assert not in_optimizer & {id(p) for p in judge.parameters()}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
