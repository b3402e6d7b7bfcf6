"""The worked examples of docs/THEORY.md, recomputed with ``lightning_curate.theory``.

Each test computes an example's numbers and checks that the guide prints them,
formatted as the guide formats them, in the section that states the example:
a wrong digit in the guide (or in the code) fails here.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from lightning_curate import theory

GUIDE = Path(__file__).resolve().parents[2] / "docs/THEORY.md"

P = [0.5, 0.3, 0.2]
R = [0.0, 1.0, 2.0]
TEN = [0.1] * 10
R_TEN = [5.0] + [0.0] * 9


def section(number: str) -> str:
    """Text of the guide under the heading numbered ``number``, up to the next heading of the same or a higher level."""
    text = GUIDE.read_text()
    heads = list(re.finditer(r"^(#{2,4}) (\d+(?:\.\d+)*)\.? ", text, flags=re.M))
    for i, head in enumerate(heads):
        if head.group(2) == number:
            level = len(head.group(1))
            end = next((h.start() for h in heads[i + 1:] if len(h.group(1)) <= level), len(text))
            return text[head.start():end]
    raise AssertionError(f"docs/THEORY.md has no section {number}")


def example(label: str) -> str:
    """The paragraph(s) that start with ``**<label>``, up to the next example or heading."""
    text = GUIDE.read_text()
    start = text.find(f"**{label}")
    assert start >= 0, f"docs/THEORY.md has no {label!r}"
    nxt = re.search(r"\*\*(Worked example|Example)|^#{2,4} ", text[start + 2:], flags=re.M)
    return text[start: start + 2 + (nxt.start() if nxt else len(text))]


def flat(text: str) -> str:
    """The text with line breaks and runs of spaces collapsed, so numbers split over lines still match."""
    return re.sub(r"\s+", " ", text)


def fmt(values, digits: int) -> str:
    return ", ".join(f"{float(v):.{digits}f}" for v in values)


def assert_printed(text: str, *numbers: str) -> None:
    body = flat(text)
    for number in numbers:
        assert number in body, f"{number!r} is not printed in:\n{body[:400]}"


def test_example_one_slot_choice_probabilities():
    probs = torch.softmax(torch.tensor(R, dtype=torch.float64), 0)
    law = theory.plackett_luce_law(R, 2)
    assert law[(2, 1)] == pytest.approx(float(probs[2]) * math.e / (1 + math.e), abs=1e-12)
    text = section("1")
    assert_printed(text, fmt(probs, 6), f"{law[(2, 1)]:.6f}", f"{float(probs[2]):.6f} x e / (1 + e)")
    assert "**Example: one slot.**" in text


def test_worked_example_1_curated_law_table_and_tilt():
    text = section("2")
    assert "**Worked example 1.**" in text
    body = flat(text)
    for K in (1, 2, 3, 5, math.inf):
        q = theory.curated_distribution(P, R, K)
        label = "inf" if K == math.inf else str(K)
        assert f"| {label} | {fmt(q, 6)} |" in body, f"row K={label}"
    assert_printed(text, f"H = ({fmt(theory.curation_weights(P, R, 2), 6)})",
                   f"E_p[w] = 0.5 + 0.3 e + 0.2 e^2 = {theory.expected_exp_reward(P, R):.6f}")
    # The tilt row is p w / E[w], as the text says.
    w = torch.exp(torch.tensor(R, dtype=torch.float64))
    tilt = torch.tensor(P, dtype=torch.float64) * w / theory.expected_exp_reward(P, R)
    assert torch.allclose(theory.tilted_distribution(P, R), tilt, atol=1e-12)


def test_worked_example_1_other_choices():
    """Two winners of three (checked against an enumeration of every draw) and best of two."""
    p = torch.tensor(P, dtype=torch.float64)
    r = torch.tensor(R, dtype=torch.float64)
    two_of_three = p * theory.empirical_curation_weights(r, 3, weights=p, num_winners=2)
    enumerated = [0.0, 0.0, 0.0]
    for draw in itertools.product(range(3), repeat=3):
        chance = P[draw[0]] * P[draw[1]] * P[draw[2]]
        for order, prob in theory.plackett_luce_law([R[i] for i in draw], 2).items():
            for position in order:
                enumerated[draw[position]] += chance * prob / 2
    assert torch.allclose(two_of_three, torch.tensor(enumerated, dtype=torch.float64), atol=1e-9)
    best_of_two = p * theory.empirical_curation_weights(r, 2, weights=p, mode="argmax")
    cdf = torch.cumsum(p, 0)
    assert torch.allclose(best_of_two, cdf**2 - torch.cat([torch.zeros(1, dtype=torch.float64), cdf[:-1]]) ** 2)
    assert_printed(example("Worked example 1."), f"gives q = ({fmt(two_of_three, 6)})",
                   f"gives q = ({fmt(best_of_two, 2)}) here")


def test_worked_example_2_one_step_of_ten_classes():
    q0 = float(theory.curated_distribution(TEN, R_TEN, 4)[0])
    assert_printed(example("Worked example 2**"), f"from 0.1 to {q0:.6f}")
    assert "**Worked example 2**" in section("2")


def test_worked_example_2_iterated():
    text = example("Worked example 2, iterated.")
    assert "**Worked example 2, iterated.**" in section("3")
    collapse = theory.retraining_trajectory(TEN, R_TEN, 4, real_fraction=0.0, rounds=4)[1:, 0]
    assert_printed(text, f"(curated only): {fmt(collapse, 3)}")
    stable = theory.retraining_trajectory(TEN, R_TEN, 4, real_fraction=0.5, rounds=80)
    assert_printed(text, f"(half real data): {fmt(stable[1:7, 0], 3)}", f"converging to {float(stable[-1, 0]):.4f}")
    assert float(stable[1:, 1:].min()) > 0.05


def test_worked_example_3_rlhf():
    p = torch.tensor(P, dtype=torch.float64)
    for _ in range(3):
        p = theory.tilted_distribution(p, R)
    optimum = theory.rlhf_optimum(P, R, 1.0, rounds=3)
    assert torch.allclose(p, optimum, atol=1e-12)
    text = example("Worked example 3.")
    assert "**Worked example 3.**" in section("4.1")
    assert_printed(text, f"p_3 = ({fmt(p, 6)})", f"1 / (3 beta) = {theory.rlhf_coefficient(3, 1.0):.6f}")


def test_worked_example_4_improvement_bound():
    text = example("Worked example 4.")
    assert "**Worked example 4.**" in section("4.2")
    w = torch.exp(torch.tensor(R, dtype=torch.float64))
    p = torch.tensor(P, dtype=torch.float64)
    mean = float((p * w).sum())
    var = float((p * (w - mean) ** 2).sum())
    assert_printed(text, f"E_p[w] = {mean:.6f}", f"Var_p[w] = {var:.6f}")
    for K in (2, 4):
        bound = theory.improvement_lower_bound(P, R, K)
        reached = theory.expected_exp_reward(theory.curated_distribution(P, R, K), R)
        assert bound == pytest.approx(mean + (K - 1) / K * var / math.exp(2.0), rel=1e-12)
        assert reached >= bound  # the theorem, on this example
        assert_printed(text, f"`K = {K}` the bound is {bound:.6f}", f"reaches {reached:.6f}")


def test_worked_example_5_collapse():
    text = example("Worked example 5.")
    assert "**Worked example 5.**" in section("4.3")
    traj = theory.retraining_trajectory(P, R, 4, real_fraction=0.0, rounds=10)
    r = torch.tensor(R, dtype=torch.float64)
    variance = [float((q * (r - (q * r).sum()) ** 2).sum()) for q in traj]
    top = traj[:, 2]
    assert_printed(text, f"goes 0.2, {float(top[1]):.4f} (round 1)", f"{float(top[5]):.4f} (round 5)",
                   f"{float(top[10]):.4f} (round 10)",
                   f"variance goes {variance[0]:.2f}, {variance[1]:.5f}, {variance[5]:.5f}, {variance[10]:.5f}")
    assert variance[10] < 1e-3 and float(top[10]) > 0.999


def test_worked_example_6_stability():
    text = example("Worked example 6.")
    assert "**Worked example 6.**" in section("4.4")
    traj = theory.retraining_trajectory(TEN, R_TEN, 4, real_fraction=0.5, rounds=80)
    data = torch.tensor(TEN, dtype=torch.float64)
    kl12 = theory.kl_divergence(data, traj[12])
    floor = float(traj[1:, 1:].min())
    assert kl12 <= math.log(2) and floor >= 0.05  # the two consequences of section 4.4
    assert all(theory.kl_divergence(data, p) <= math.log(2) + 1e-12 for p in traj)
    tilt = theory.retraining_trajectory(TEN, R_TEN, math.inf, real_fraction=0.5, rounds=200)[-1]
    w = torch.exp(torch.tensor(R_TEN, dtype=torch.float64))
    fixed = 0.5 * data / (1 - 0.5 * w / float((tilt * w).sum()))
    assert torch.allclose(fixed, tilt, atol=1e-7)  # the fixed-point formula of section 4.4
    assert_printed(text, f"converges to {float(traj[-1, 0]):.4f}", f"above {floor:.6f}",
                   f"KL(p_data || p_12) = {kl12:.6f}", f"class-0 share of {float(tilt[0]):.6f}")
    assert_printed(section("4.4"), f"log 2 = {math.log(2):.6f}")


# Section 7: populations of curators (lightning_curate/theory/population.py).


def pair(values, digits: int = 4) -> str:
    return f"({fmt(values, digits)})"


def test_worked_example_7_mixture_law():
    from lightning_curate.theory.population import AtomCurator, population_curated_distribution

    text = example("Worked example 7.")
    assert "**Worked example 7.**" in section("7.1")
    pulled = 0.5 * (1 + math.tanh(0.5) / 2)
    one = population_curated_distribution([0.5, 0.5], [AtomCurator([1.0, 0.0], num_candidates=2)])
    assert float(one[0]) == pytest.approx(pulled, abs=1e-12)
    even = [AtomCurator([1.0, 0.0], num_candidates=2), AtomCurator([0.0, 1.0], num_candidates=2)]
    half = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.allclose(population_curated_distribution([0.5, 0.5], even), half)
    assert torch.allclose(theory.curated_distribution([0.5, 0.5], [0.5, 0.5], 2), half)
    uneven = [AtomCurator([1.0, 0.0], num_candidates=2, weight=0.6),
              AtomCurator([0.0, 1.0], num_candidates=2, weight=0.4)]
    mixture = population_curated_distribution([0.5, 0.5], uneven)
    averaged = theory.curated_distribution([0.5, 0.5], [0.6, 0.4], 2)
    assert_printed(text, f"0.5 (1 + tanh(1/2) / 2) = {pulled:.3f}", f"mixture is `{pair(mixture)}`",
                   f"`(0.6, 0.4)` gives `{pair(averaged)}`")
    # One curator is the law of section 2 (worked example 1's K = 2 row).
    single = population_curated_distribution(P, [AtomCurator(R, num_candidates=2)])
    assert_printed(section("7.1"), f"`q = ({fmt(single, 6)})`")


def test_worked_example_8_two_curators_k2():
    from lightning_curate.theory.population import (
        two_curator_fixed_points,
        two_curator_fixed_points_k2,
        two_curator_population,
    )

    text = example("Worked example 8")
    assert "**Worked example 8**" in section("7.2.1")
    even = two_curator_fixed_points_k2(0.6, math.tanh(0.5), math.tanh(0.5))
    sharp = two_curator_fixed_points_k2(0.6, math.tanh(0.5), math.tanh(1.5))
    assert even["winner"] == "a" and sharp["winner"] == "b"
    for beta_b, winner in [(1.0, (1.0, 0.0)), (3.0, (0.0, 1.0))]:
        numeric = two_curator_fixed_points(two_curator_population(0.6, 1.0, beta_b, num_candidates=2))
        assert [(p["a"], p["b"]) for p in numeric if p["stable"]] == [winner]
    assert_printed(text, f"`alpha = 0.6 tanh(0.5) = {even['alpha']:.3f} > beta~ = {even['beta']:.3f}`",
                   f"`beta~ = 0.4 tanh(1.5) = {sharp['beta']:.3f} > {sharp['alpha']:.3f}`")


def test_worked_example_9_fixed_points_and_invasion_rates():
    from lightning_curate.theory.population import invasion_rate, two_curator_fixed_points, two_curator_population

    text = example("Worked example 9")
    assert "**Worked example 9**" in section("7.2.2")

    def stable(crowd, *args):
        (point,) = [p for p in two_curator_fixed_points(crowd, *args) if p["stable"]]
        return point

    half = two_curator_population(0.5, 2.0, 2.0, num_candidates=4)
    w = math.exp(2.0)
    rate = invasion_rate(half, 1)
    assert rate == pytest.approx(0.5 * 4 * w / (w + 3) + 0.5 * 4 / (1 + 3 * w), abs=1e-12)
    point = stable(half)
    assert_printed(text, f"(1 + 3 e^2) = {rate:.4f}` | `{pair((point['a'], point['b']), 1)}`, "
                         f"spectral radius {point['spectral_radius']:.3f} (polarised)")
    tilted = two_curator_population(0.6, 2.0, 2.0, num_candidates=4)
    point = stable(tilted)
    assert_printed(text, f"`lambda_A = {invasion_rate(tilted, 0):.3f}`, `lambda_B = {invasion_rate(tilted, 1):.3f}`",
                   f"`{pair((point['a'], point['b']))}` (polarised)")
    point = stable(tilted, 0.5, 0.125, 0.125)
    assert_printed(text, f"`a_0 = b_0 = 1/8` | | `{pair((point['a'], point['b']))}`")
    best = two_curator_population(0.5, 1.0, 1.0, num_candidates=3, mode="argmax")
    point = stable(best)
    assert invasion_rate(best, 0) == invasion_rate(best, 1) == 1.5
    assert_printed(text, f"`K / 2 = 1.5` | `{pair((point['a'], point['b']), 1)}`")


def test_worked_example_10_adversaries_on_ten_classes():
    from lightning_curate.theory.population import adversarial_threshold

    text = example("Worked example 10.")
    assert "**Worked example 10.**" in section("7.3.1")
    top = theory.curated_share_map(0.1, 5.0, 0.0, 4)
    h, g = top / 0.1, (1 - top) / 0.9
    assert (1 - g) / (h - g) == pytest.approx(0.1, abs=1e-12)  # round 1: the target's data share
    w = math.exp(5.0)
    survival = (1 - 4 / (1 + 3 * w)) / (4 * w / (w + 3) - 4 / (1 + 3 * w))
    negated = (top - 0.1) / (top - theory.curated_share_map(0.1, -5.0, 0.0, 4))
    assert_printed(text, f"4 / (1 + 3 e^5)) = {survival:.4f}", f"Q_-(0.1)) = {negated:.4f}")
    grows = lambda pT, p0: float(pT[1]) > float(p0[1])  # noqa: E731
    measured = [adversarial_threshold(torch.tensor(TEN, dtype=torch.float64), R_TEN, grows, real_fraction=rho,
                                      rounds=10, kind="target", target=[0.0, 5.0] + [0.0] * 8, tol=1e-4,
                                      num_candidates=4)
                for rho in (0.0, 0.25, 0.5)]
    assert_printed(text, f"`epsilon > {measured[0]:.3f}` (`rho = 0`), `{measured[1]:.3f}` (`rho = 0.25`), "
                         f"`{measured[2]:.3f}` (`rho = 0.5`)")


def test_section_7_3_3_real_data_caps_the_adversaries():
    from lightning_curate.theory.population import adversarial_grid

    out = adversarial_grid(TEN, R_TEN, [0.0, 0.5], [0.0, 0.25, 0.5], rounds=10, kind="target",
                           target=[0.0, 5.0] + [0.0] * 8, num_candidates=4)
    held = " / ".join(f"{float(v):.2f}" for v in out["law"][1, :, 1])
    honest = out["honest_reward"][0]
    assert float(honest[0]) == pytest.approx(5.0, abs=1e-6)
    # The cap: class 0 holds at most rho * 0.1 + (1 - rho) of the mass, a reward of 5 - 4.5 rho.
    assert all(float(honest[i]) <= 5 - 4.5 * rho for i, rho in enumerate((0.0, 0.25, 0.5)))
    assert_printed(section("7.3.3"), f"holds {held} of the", "`5 (1 - rho) + 0.5 rho = 5 - 4.5 rho`",
                   f"{float(honest[1]):.2f} and {float(honest[2]):.2f} for")


def test_worked_example_11_bradley_terry_projection_of_a_population():
    from lightning_curate.preference.evaluate import best_bt_scores
    from lightning_curate.theory.population import AtomCurator

    text = example("Worked example 11.")
    assert "**Worked example 11.**" in section("7.4")
    crowd = [AtomCurator(R_TEN, weight=0.75, num_candidates=4),
             AtomCurator([0.0, 5.0] + [0.0] * 8, weight=0.25, num_candidates=4)]
    s = best_bt_scores(TEN, crowd, 4)["scores"]
    assert torch.allclose(s[2:], s[2:].mean().expand(8), atol=1e-8)  # the other classes tie
    assert_printed(text, f"class 0 at `+{float(s[0] - s[2]):.3f}` and class 1 at `+{float(s[1] - s[2]):.3f}`",
                   f"against `{0.75 * 5:.2f}` and `{0.25 * 5:.2f}`")


def test_every_worked_example_is_checked():
    """A new worked example in the guide needs a test here."""
    labels = re.findall(r"\*\*((?:Worked example|Example)[^*]*)\*\*", GUIDE.read_text())
    assert labels == ["Example: one slot.", "Worked example 1.", "Worked example 2", "Worked example 2, iterated.",
                      *[f"Worked example {n}." for n in range(3, 8)], "Worked example 8", "Worked example 9",
                      "Worked example 10.", "Worked example 11."]


def test_the_checker_catches_a_wrong_digit(tmp_path, monkeypatch):
    """The checks above read the guide: a guide with one digit changed fails them."""
    wrong = tmp_path / "guide.md"
    wrong.write_text(GUIDE.read_text().replace("0.354523, 0.341591, 0.303886", "0.354523, 0.341591, 0.303887"))
    monkeypatch.setattr(sys.modules[__name__], "GUIDE", wrong)
    with pytest.raises(AssertionError):
        test_worked_example_1_curated_law_table_and_tilt()
