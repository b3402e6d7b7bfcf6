"""The documentation holds: references into docs/THEORY.md resolve, links resolve,
nothing points outside the project, and the README's custom-trainer example runs.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "THEORY.md"
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}


def project_files() -> list[Path]:
    """Every text file a user or developer reads: code, configs, scripts, tests, docs."""
    files = [REPO / "README.md", REPO / "Makefile", REPO / "pyproject.toml", REPO / ".ci" / "run"]
    for folder, suffixes in [("lightning_curate", {".py"}), ("kernels", {".py"}), ("scripts", {".py", ".sbatch"}),
                             ("tests", {".py", ".yaml"}), ("configs", {".yaml"}), ("docs", {".md"})]:
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in suffixes and "__pycache__" not in p.parts]
    return [p for p in files if p.is_file()]


def joined(text: str) -> str:
    """``text`` with Python string concatenation and comment/docstring line breaks undone,
    so a reference split over two lines reads as one."""
    text = re.sub(r"\"\s*\n\s*[rf]?\"", "", text)
    return re.sub(r"\s*\n\s*(?:#+\s*)?", " ", text)


def headings() -> dict[str, str]:
    """Section number -> heading line of the guide (``## 4.`` and ``### 4.2 ...``)."""
    found = {}
    for match in re.finditer(r"^#{2,4} (\d+(?:\.\d+)*)\.? (.*)$", GUIDE.read_text(), flags=re.M):
        found[match.group(1)] = match.group(2)
    return found


REFERENCE = re.compile(
    r"docs/THEORY\.md(?:'s)?\s+(?:sections?\s+)?(?P<first>\d+(?:\.\d+)?)(?:\s*-\s*(?P<last>\d+(?:\.\d+)?))?"
    r"(?:,\s*result\s+(?P<result>\d+))?")
WORKED = re.compile(r"docs/THEORY\.md's\s+(?P<ordinal>\w+)\s+worked example")


def references() -> list[tuple[str, str, dict]]:
    """(file, matched text, groups) of every numbered reference into the guide."""
    found = []
    for path in project_files():
        if path in (GUIDE, Path(__file__).resolve()):
            continue
        text = joined(path.read_text(errors="replace"))
        for match in list(REFERENCE.finditer(text)) + list(WORKED.finditer(text)):
            found.append((str(path.relative_to(REPO)), match.group(0), match.groupdict()))
    return found


def test_the_guide_has_the_cited_numbering():
    assert {"1", "2", "3", "4", "4.1", "4.2", "4.3", "4.4", "5"} <= set(headings())


def test_every_reference_into_the_guide_resolves():
    heads = headings()
    refs = references()
    assert len(refs) >= 30, "the reference scan found too little: is the pattern still right?"
    bad = []
    for where, text, groups in refs:
        if groups.get("ordinal"):
            number = ORDINALS.get(groups["ordinal"])
            if number is None or f"**Worked example {number}" not in GUIDE.read_text():
                bad.append(f"{where}: {text!r} (no such worked example)")
            continue
        first, last = groups["first"], groups["last"] or groups["first"]
        wanted = {first, last}
        if "." not in first and "." not in last:
            wanted |= {str(n) for n in range(int(first), int(last) + 1)}
        if groups["result"]:
            wanted.add(f"{first}.{groups['result']}")
        for number in wanted:
            if number not in heads:
                bad.append(f"{where}: {text!r} (no section {number})")
        if groups["result"] and f"Result {groups['result']}" not in heads.get(f"{first}.{groups['result']}", ""):
            bad.append(f"{where}: {text!r} (section {first}.{groups['result']} is not result {groups['result']})")
    assert not bad, "\n".join(bad)


def test_the_reference_scan_catches_a_dangling_one():
    text = joined('warn(f"below the bound (docs/THEORY.md "\n    "4.7): under-trained")  # docs/THEORY.md section 9')
    numbers = [m.group("first") for m in REFERENCE.finditer(text)]
    assert numbers == ["4.7", "9"]
    assert not {"4.7", "9"} & set(headings())


# What the citing code and configs rely on each section to say.
SECTION_CONTENT = {
    "1": ["Bradley-Terry", "Gumbel", "Plackett-Luce", "logsumexp", "best of `K`"],
    "2": ["H_t(x)", "exponential clock", "K -> inf", "p_t(x) w(x) / E_{p_t}[w]", "ideal learner",
          "empirical_curation_weights", "Worked example 1", "Worked example 2"],
    "3": ["p_{t+1} = rho p_data + (1 - rho) q_t", "`replace`", "`accumulate`", "0.338, 0.798, 0.996"],
    "4.1": ["RLHF", "KL(p || p_0)", "1 / (t beta)", "rlhf_coefficient", "kl_to_rlhf_optimum"],
    "4.2": ["((K - 1) / K) Var_{p_t}[w] / exp(beta r*)", "exp_reward_lower_bound", "improvement_violation",
            "under-trained"],
    "4.3": ["top level set", "bias amplification", "ClippedDistanceReward"],
    "4.4": ["real data", "rho p_data", "log(1 / rho)"],
    "5": ["configs/mog8.yaml", "configs/digits.yaml", "configs/discrete.yaml", "kl_to_rlhf_optimum",
          "predicted_reward_mean", "tilt_reward_mean"],
}


@pytest.mark.parametrize("number", sorted(SECTION_CONTENT))
def test_each_cited_section_says_what_its_citers_expect(number):
    text = GUIDE.read_text()
    start = re.search(rf"^#{{2,4}} {re.escape(number)}\.? ", text, flags=re.M)
    assert start, f"no section {number}"
    level = text[start.start():].index(" ")
    end = re.search(rf"^#{{2,{level}}} ", text[start.end():], flags=re.M)
    body = re.sub(r"\s+", " ", text[start.start(): start.end() + (end.start() if end else len(text))])
    missing = [phrase for phrase in SECTION_CONTENT[number] if phrase not in body]
    assert not missing, f"section {number} lacks {missing}"


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_every_relative_link_and_image_resolves():
    bad = []
    for md in markdown_files():
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", md.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (md.parent / target.split("#")[0]).exists():
                bad.append(f"{md.relative_to(REPO)}: {target}")
    assert not bad, "\n".join(bad)


def test_every_named_config_and_script_exists():
    """Paths the docs and configs tell a user to run are there (a renamed config breaks this)."""
    bad = []
    files = [*markdown_files(), *(REPO / "configs").rglob("*.yaml"), *(REPO / "scripts").glob("*"),
             *(REPO / "lightning_curate").rglob("*.py")]
    for path in files:
        if not path.is_file():
            continue
        for name in re.findall(r"(?<![\w/.])((?:configs|scripts|docs)/[\w./-]+\.(?:yaml|py|sbatch|md|png))",
                               path.read_text(errors="replace")):
            if not (REPO / name).exists():
                bad.append(f"{path.relative_to(REPO)}: {name}")
    assert not bad, "\n".join(bad)


def test_nothing_points_outside_the_project_or_at_a_bare_guide():
    outside = re.compile(r"\.\./" + "shared" + r"|/work/" + "shared")
    bare = re.compile(r"(?<![\w/.-])THEORY\.md")
    bad = []
    for path in project_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line) or bare.search(line):
                bad.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not bad, "\n".join(bad)


def readme_example() -> str:
    """The Python block under the README's "A custom reward in a custom trainer"."""
    text = (REPO / "README.md").read_text()
    start = text.index("A custom reward in a custom trainer")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match, "the README lost its custom-trainer example"
    return match.group(1)


def test_readme_custom_trainer_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md example", "exec"), {"__name__": "readme_example"})
    with open(tmp_path / "runs" / "custom" / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    reward = [float(r["reward_mean"]) for r in rows]
    curated = [float(r["curated_reward_mean"]) for r in rows]
    # The custom reward drives the loop: curation keeps better samples, and the reward rises.
    assert all(c > m for c, m in zip(curated, reward))
    assert reward[-1] > reward[0] + 1.0, reward
    # What the README says about the run ("about -2.1", "about -0.25"; a few threads move the digits).
    assert abs(reward[0] + 2.1) < 0.05 and abs(reward[-1] + 0.25) < 0.03, reward
    assert (tmp_path / "runs" / "custom" / "round_metrics.png").is_file()
