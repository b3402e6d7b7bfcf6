"""A population of curators in CurationModule: the per-slot draw, each slot's own choice, choice logs."""

import pytest
import torch
from loop_helpers import assert_same_outcome, build_module

from lightning_curate.data.toy2d import ModeAssigner, mode_names
from lightning_curate.loop import Curator, RoundStore
from lightning_curate.loop.curators import draw_curators, population_shares
from lightning_curate.loop.prediction import PopulationForecast, mixture_weights, predict_next
from lightning_curate.rewards import AtomReward, ClippedDistanceReward, NegatedReward
from lightning_curate.store.settings import diff_settings
from lightning_curate.theory import empirical_curation_weights
from lightning_curate.theory.population import AtomCurator, empirical_population_weights

NUM_SLOTS = 600  # two blocks of slots (512 + 88)
K = 3
NAMES = mode_names("mog8")


@pytest.fixture(scope="module")
def assigner():
    return ModeAssigner("mog8")


def honest():
    return ClippedDistanceReward(dataset="mog8", targets=[0, 1])


def population(mode="softmax", adversary=None, weights=(0.75, 0.25)):
    adv = adversary if adversary is not None else ClippedDistanceReward(dataset="mog8", targets=[4])
    return [Curator(honest(), beta=1.0, mode=mode, weight=weights[0], name="honest"),
            Curator(adv, beta=2.0, mode=mode, weight=weights[1], name="adversary")]


def build(curators=None, **kwargs):
    return build_module(honest(), curators=curators, **{"num_slots": NUM_SLOTS, "num_candidates": K, **kwargs})


def curate(module, assigner, seed=11, **kwargs):
    return module.curate_round(1, seed=seed, label_fn=assigner, class_names=NAMES, **kwargs)


def test_a_population_of_one_is_the_one_curator_round(assigner):
    one = curate(build(), assigner)
    alone = curate(build([Curator(honest(), beta=1.0, name="only")]), assigner)
    for key in one.tensors:
        assert torch.equal(one.tensors[key], alone.tensors[key]), key
    assert alone.row["slots_only"] == 1.0
    assert alone.row["reward_mean_only"] == pytest.approx(one.row["reward_mean"], rel=1e-6)


def test_chunk_size_and_ranks_do_not_change_a_population_round(assigner, tmp_path):
    def run(**kwargs):
        return curate(build(population(), log_choices=NUM_SLOTS, **kwargs), assigner)

    large = run(chunk_size=100000)
    assert_same_outcome(run(chunk_size=100), large)
    assert_same_outcome(run(chunk_size=512), large)
    assert "choice_curator" in large.tensors and "probe_curator_rewards" in large.tensors
    # Two ranks, each its own blocks, merged by the store in slot order: the same tensors.
    store = RoundStore(tmp_path / "rounds")
    store.begin(1)
    for rank in (0, 1):
        out = curate(build(population(), log_choices=NUM_SLOTS), assigner, rank=rank, world_size=2)
        store.write_part(1, out.tensors, rank=rank)
    store.commit(1, {"row": {}})
    merged = store.read(1).tensors
    for key, value in large.tensors.items():
        assert torch.equal(merged[key], value), key


def test_each_slot_is_chosen_by_its_own_curator(assigner):
    # Best-of-K curators with opposite rewards: a slot's winner is the best of its
    # candidates for the curator the draw gave it, and the worst for the other.
    crowd = population(mode="argmax", adversary=NegatedReward(honest()), weights=(0.6, 0.4))
    out = curate(build(crowd, log_choices=NUM_SLOTS, preview_size=0), assigner, seed=5)
    t = out.tensors
    cands, idx, who = t["choice_candidates"], t["choice_index"][:, 0], t["choice_curator"]
    assert torch.equal(t["choice_slot"], torch.arange(NUM_SLOTS))
    assert torch.equal(who, torch.cat([draw_curators(5, 0, 512, torch.tensor([0.6, 0.4], dtype=torch.float64)),
                                       draw_curators(5, 1, 88, torch.tensor([0.6, 0.4], dtype=torch.float64))]))
    r = honest()(cands.reshape(-1, 2)).view(NUM_SLOTS, K)
    assert torch.equal(t["choice_rewards"], r)
    picked = r.gather(1, idx[:, None])[:, 0]
    assert torch.equal(picked[who == 0], r.max(dim=1).values[who == 0])
    assert torch.equal(picked[who == 1], r.min(dim=1).values[who == 1])
    assert torch.equal(t["x"], cands[torch.arange(NUM_SLOTS), idx])
    assert torch.equal(t["rewards"], picked)
    # The row: each curator's slots and its reward of all candidates and of the kept ones.
    row = out.row
    assert row["slots_honest"] == pytest.approx(float((who == 0).double().mean()))
    assert 0.55 < row["slots_honest"] < 0.65
    assert row["reward_mean_honest"] == pytest.approx(float(r.double().mean()), rel=1e-5)
    assert row["reward_mean_adversary"] == pytest.approx(-float(r.double().mean()), rel=1e-5)
    assert row["curated_reward_mean_honest"] == pytest.approx(float(picked.double().mean()), rel=1e-5)
    assert row["selection_entropy"] == 0.0  # every slot is a best-of-K: no randomness left


def test_choice_logs_without_curators_are_the_kept_choices(assigner):
    out = curate(build(log_choices=50, preview_size=0), assigner)
    t = out.tensors
    assert set(t) >= {"choice_candidates", "choice_index", "choice_slot", "choice_rewards"}
    assert "choice_curator" not in t and "preview" not in t
    assert t["choice_candidates"].shape == (50, K, 2) and t["choice_index"].shape == (50, 1)
    assert torch.equal(t["x"][:50], t["choice_candidates"][torch.arange(50), t["choice_index"][:, 0]])
    plain = curate(build(preview_size=0), assigner)
    for key in ("x", "rewards", "labels", "slot"):
        assert torch.equal(plain.tensors[key], t[key]), key  # logging never changes the round


def test_mixture_weights_are_the_population_weights():
    torch.manual_seed(0)
    r = torch.randn(2, 40, dtype=torch.float64)
    crowd = population()
    pi = torch.tensor([0.75, 0.25], dtype=torch.float64)
    theory = [AtomCurator([0.0] * 40, beta=c.beta, mode=c.mode, num_candidates=4, weight=c.weight) for c in crowd]
    assert torch.allclose(mixture_weights(r, torch.nn.ModuleList(crowd), pi, 4),
                          empirical_population_weights(r, theory), atol=1e-12)


def test_shares_fix_a_fraction_and_weights_split_the_rest():
    def crowd(*specs):
        return [Curator(honest(), name=f"c{i}", **spec) for i, spec in enumerate(specs)]

    assert population_shares(crowd({"weight": 3.0}, {"weight": 1.0})).tolist() == [0.75, 0.25]
    assert population_shares(crowd({"weight": 1.0}, {"weight": 3.0}, {"share": 0.2})).tolist() == \
        pytest.approx([0.2, 0.6, 0.2])
    assert population_shares(crowd({"weight": 5.0}, {"share": 0.0})).tolist() == [1.0, 0.0]
    assert population_shares(crowd({"share": 0.5}, {"share": 0.5})).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="shares add up to 1.2"):
        population_shares(crowd({"share": 0.6}, {"share": 0.6}))
    with pytest.raises(ValueError, match="no other curator has a weight"):
        population_shares(crowd({"share": 0.5}, {"weight": 0.0}))
    with pytest.raises(ValueError, match="share"):
        Curator(honest(), share=1.5)


def test_the_population_is_a_science_setting():
    a, b = build(population()), build(population(adversary=ClippedDistanceReward(dataset="mog8", targets=[5])))
    sa, sb = a.population_settings(), b.population_settings()
    assert [c["name"] for c in sa["curators"]] == ["honest", "adversary"]
    assert sa != sb  # same class and arguments, other centres: another population
    assert build().population_settings() == {}
    assert diff_settings({"beta": 1.0}, {"beta": 1.0, **sa}) == {"curators": [None, sa["curators"]]}
    assert diff_settings({"beta": 1.0}, {"beta": 1.0}) == {}


def test_negated_reward_negates_values_and_rewards():
    inner = AtomReward([1.0, 0.0, 2.0], gamma=2.0)
    neg = NegatedReward(inner)
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert torch.equal(neg(x), -inner(x))
    assert torch.equal(neg.values, -inner.values)
    assert NegatedReward(honest()).values is None
    with pytest.raises(TypeError, match="reward"):
        NegatedReward(lambda x: x)


@pytest.mark.parametrize("curators, pattern", [
    ([], "at least one Curator"),
    ("not a list", "must be a lightning_curate.loop.Curator"),
    ([Curator(honest(), name="a"), Curator(honest(), name="a")], "distinct names"),
    ([Curator(honest(), weight=0.0)], "weights must not all be 0"),
])
def test_bad_populations_are_refused(curators, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        build(curators)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"name": "a b"}, "name"), ({"weight": -1.0}, "^Curator: weight"), ({"mode": "best"}, "^Curator: mode"),
    ({"beta": -1.0}, "^Curator: beta"), ({"share": 1.5}, "^Curator: share"),
    ({"weight": -1.0, "name": "adversary"}, "^Curator 'adversary': weight must be"),
])
def test_bad_curators_are_refused_naming_the_curator(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Curator(honest(), **kwargs)
    with pytest.raises(TypeError, match="^Curator 'x': reward must be an nn.Module"):
        Curator(lambda x: x, name="x")


def test_log_choices_must_be_a_count():
    with pytest.raises(ValueError, match="log_choices"):
        build(log_choices=-1)


def test_a_curator_with_the_reference_reward_reuses_its_scores(assigner):
    """The honest curator's reward is the reference's (a separate but equal module): its candidates
    are scored once, and the round is what scoring them twice gives."""
    module = build(population())
    assert module._reuses_reference == [True, False]
    twice = build(population())
    twice._reuses_reference = [False, False]

    def never(x):
        raise AssertionError("the reference reward's scores were not reused")

    module.curators[0].reward.forward = never
    assert_same_outcome(curate(module, assigner), curate(twice, assigner))
    other = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.7)
    assert build([Curator(other, name="wider")])._reuses_reference == [False]


def test_a_population_of_one_predicts_what_one_curator_predicts(assigner):
    one, alone = build(), build([Curator(honest(), beta=1.0, name="only")])
    probe = curate(one, assigner).tensors
    probe_alone = curate(alone, assigner).tensors
    real = torch.randn(300, 2) * 2
    kwargs = dict(class_names=NAMES, real_fraction=0.5, real_rewards=honest()(real),
                  real_labels=assigner(real), real_samples=real, round_idx=1)
    want = predict_next(one, probe, **kwargs)
    got = predict_next(alone, probe_alone, **kwargs)
    keys = [k for k in want if k.startswith("predicted_") and "exp" not in k]
    assert len(keys) > 10
    for key in keys:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["predicted_reward_mean_only"] == pytest.approx(want["predicted_reward_mean"], abs=1e-9)
    # Round 1's ideal learner, one step from the real data's law: rho p_data + (1 - rho) p_data H.
    r = honest()(real).double()
    law = 0.5 / 300 + 0.5 * empirical_curation_weights(r, K, 1.0) / 300
    assert got["ideal_reward_mean"] == pytest.approx(float(law @ r), abs=1e-9)
    assert got["ideal_reward_mean_only"] == pytest.approx(float(law @ r), abs=1e-9)
    assert not any(k.startswith("tilt_") for k in got)
    # A slot's winner depends on its curator: the one-curator selection spreads are not reported.
    assert "selection_reward_sd" in want and not any(k.startswith("selection_") for k in got)


def test_a_forecast_keeps_the_population_state_between_rounds_not_the_module(assigner):
    """The curators' rewards of the real data are scored once and the ideal learner's laws grow one
    a round, in the forecast; the module's attributes are not written, and a fresh forecast gives
    the same columns (recomputing them)."""
    module = build(population())
    probe = curate(module, assigner).tensors
    real = torch.randn(300, 2) * 2
    kwargs = dict(class_names=NAMES, real_fraction=0.5, real_rewards=honest()(real), real_labels=assigner(real),
                  real_samples=real)
    before = dict(vars(module))
    forecast = PopulationForecast()
    kept = [predict_next(module, probe, round_idx=t, forecast=forecast, **kwargs) for t in (1, 2, 3)]
    assert len(forecast.laws) == 4 and forecast.real_curator_rewards.shape == (300, 2)
    assert vars(module).keys() == before.keys() and all(vars(module)[k] is v for k, v in before.items())
    fresh = predict_next(module, probe, round_idx=3, **kwargs)
    assert fresh == pytest.approx(kept[-1], nan_ok=True)
    assert kept[0]["ideal_reward_mean"] != kept[-1]["ideal_reward_mean"]
