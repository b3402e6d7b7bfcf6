"""The transform between selection and storage, and the slot budget's schedule by round."""

import math

import pytest
import torch
from loop_helpers import build_module
from torch import nn

from lightning_curate.data import BlendingDataModule, Toy2D
from lightning_curate.data.toy2d import ModeAssigner, make_2d, mode_centers, mode_names
from lightning_curate.loop import ManifoldProjection, PoolFraction, SlotSchedule
from lightning_curate.rewards.geometric import ClippedDistanceReward
from lightning_curate.store.rounds import RoundStore
from lightning_curate.store.settings import diff_settings

REWARD = ClippedDistanceReward(dataset="mog8", targets=[0, 1])


@pytest.mark.parametrize("selection", [None, PoolFraction("top", 0.3)])
def test_the_stored_samples_are_the_transformed_selection(selection):
    assigner = ModeAssigner("mog8")
    names = mode_names("mog8")
    proj = ManifoldProjection("mog8", strength=0.5)
    plain = build_module(REWARD, num_slots=700, num_candidates=3, chunk_size=512, selection=selection)
    moved = build_module(REWARD, num_slots=700, num_candidates=3, chunk_size=512, selection=selection,
                         transform=proj)
    a = plain.curate_round(0, seed=5, label_fn=assigner, class_names=names)
    b = moved.curate_round(0, seed=5, label_fn=assigner, class_names=names)
    assert torch.equal(b.tensors["x"], proj(a.tensors["x"]))
    assert torch.equal(b.tensors["rewards"], REWARD(b.tensors["x"]))  # re-scored ...
    assert torch.equal(b.tensors["labels"], assigner(b.tensors["x"]))  # ... and relabelled
    assert torch.equal(b.tensors["slot"], a.tensors["slot"])
    assert b.row["curated_reward_mean"] == a.row["curated_reward_mean"]  # the selection's
    assert b.row["stored_reward_mean"] == pytest.approx(float(REWARD(b.tensors["x"]).double().mean()), rel=1e-6)
    assert "stored_reward_mean" not in a.row


def test_manifold_projection_moves_a_fraction_toward_the_nearest_point():
    x = torch.tensor([[0.1, 0.2], [3.0, -1.0]])
    centers = mode_centers("mog8")
    nearest = centers[((x[:, None] - centers[None]) ** 2).sum(-1).argmin(1)]
    assert torch.allclose(ManifoldProjection("mog8", 0.25, target="centers")(x), x + 0.25 * (nearest - x))
    reference = make_2d("mog8", 4096, 12345)[0]
    to_data = reference[((x[:, None] - reference[None]) ** 2).sum(-1).argmin(1)]
    assert torch.equal(ManifoldProjection("mog8", 1.0).nearest(x), to_data)
    assert torch.allclose(ManifoldProjection("mog8", 1.0)(x), to_data)
    assert torch.equal(ManifoldProjection("mog8", 0.0)(x), x)
    with pytest.raises(ValueError, match="strength"):
        ManifoldProjection("mog8", 1.5)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        ManifoldProjection("mog8")(torch.zeros(3, 4))


class Shrink(nn.Module):
    def forward(self, x):
        return x[:1]


def test_a_transform_that_changes_the_shape_is_an_error():
    module = build_module(REWARD, num_slots=50, transform=Shrink())
    with pytest.raises(ValueError, match="transform Shrink returned shape"):
        module.curate_round(0, seed=1)
    with pytest.raises(TypeError, match="transform must be an nn.Module"):
        build_module(REWARD, transform=lambda x: x)


def test_schedules_give_the_slots_of_each_round():
    assert [SlotSchedule().slots(100, t) for t in range(3)] == [100, 100, 100]
    assert [SlotSchedule("linear", increment=50).slots(100, t) for t in range(3)] == [100, 150, 200]
    assert [SlotSchedule("linear", increment=-60).slots(100, t) for t in range(3)] == [100, 40, 1]
    assert [SlotSchedule("geometric", factor=1.5).slots(100, t) for t in range(4)] == [100, 150, 225, 338]
    with pytest.raises(ValueError, match="num_slots_schedule.kind"):
        SlotSchedule("cosine")
    with pytest.raises(ValueError, match="num_slots_schedule.factor"):
        SlotSchedule("geometric", factor=0.0)


def test_a_round_curates_its_scheduled_slots_from_the_same_seeds():
    module = build_module(REWARD, num_slots=300, num_candidates=2,
                          num_slots_schedule=SlotSchedule("geometric", factor=2.0))
    sizes = [module.curate_round(t, seed=9).tensors["x"].shape[0] for t in range(3)]
    assert sizes == [300, 600, 1200]
    # the first 300 slots of a larger round are the 300-slot round's (randomness is keyed by block)
    fixed = build_module(REWARD, num_slots=600, num_candidates=2).curate_round(1, seed=9)
    assert torch.equal(module.curate_round(1, seed=9).tensors["x"], fixed.tensors["x"])
    assert module.curate_round(2, seed=9).row["num_slots"] == 1200.0
    with pytest.raises(TypeError, match="num_slots_schedule must be a SlotSchedule"):
        build_module(REWARD, num_slots_schedule={"kind": "linear"})


def test_the_settings_record_the_schedule_and_the_transform_and_a_resume_sees_them_added():
    module = build_module(REWARD, num_slots_schedule=SlotSchedule("linear"), transform=ManifoldProjection())
    settings = module.population_settings()
    assert settings["num_slots_schedule"] == {"kind": "linear", "factor": 1.0, "increment": None}
    assert settings["transform"]["init_args"]["strength"] == 0.5
    assert set(diff_settings({"num_slots": 2000}, {"num_slots": 2000, **settings})) == {"num_slots_schedule",
                                                                                      "transform"}


@pytest.mark.parametrize("policy, expected", [("replace", 45), ("accumulate", 20 + 30 + 45),
                                              ("accumulate_subsample", 45)])
def test_the_datamodule_blends_rounds_of_growing_sizes(tmp_path, policy, expected):
    store = RoundStore(tmp_path / "rounds")
    for t, n in enumerate([20, 30, 45]):
        store.write(t, {"x": torch.full((n, 2), 100.0 + t)}, {"note": "grown"})
    dm = BlendingDataModule(Toy2D(name="mog8", num_train=200, num_heldout=8), policy=policy, real_fraction=0.5,
                            batch_size=8)
    dm.attach(store, lambda epoch: epoch)
    data = dm.dataset_for_round(3).tensors[0]
    synthetic = data[data[:, 0] >= 100]
    assert synthetic.shape[0] == expected and dm.composition[3]["n_synthetic"] == expected
    assert dm.composition[3]["n_real"] == expected  # rho = 0.5: as many real rows
    if policy == "replace":
        assert bool((synthetic == 102.0).all())
    assert math.isclose(dm.composition[3]["real_fraction"], 0.5)
