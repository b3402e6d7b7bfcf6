"""The documentation holds: references into docs/THEORY.md resolve, links resolve,
nothing points outside the project, the site's navigation names every page, the
README stays a short user's guide that quotes no run, the records hook renders and
refuses as it says, and the README's custom-trainer example runs.
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
    files = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "Makefile", REPO / "pyproject.toml",
             REPO / ".ci" / "run", REPO / "mkdocs.yml", REPO / "mkdocs_hooks.py"]
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
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


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
    """Paths the docs and configs tell a user to run are there (a renamed config breaks this).

    History is exempt: a dated experiment record gives the command as it was run, and
    CHANGELOG.md the files as they were named; either may have moved since (their links
    are still checked above)."""
    bad = []
    records = REPO / "docs" / "experiments"
    files = [*[md for md in markdown_files() if records not in md.parents and md.name != "CHANGELOG.md"],
             *(REPO / "configs").rglob("*.yaml"), *(REPO / "scripts").glob("*"),
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
        nav = path.name == "mkdocs.yml"  # its page paths are relative to docs/ by design
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if outside.search(line) or (bare.search(line) and not nav):
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
    # The run pinned (the README says only that the reward rises; a few threads move the digits).
    assert abs(reward[0] + 2.1) < 0.05 and abs(reward[-1] + 0.25) < 0.03, reward
    assert (tmp_path / "runs" / "custom" / "round_metrics.png").is_file()


# --- the site -----------------------------------------------------------------------------------------------

def nav_pages() -> list[str]:
    """Every page the site's navigation names, relative to docs/."""
    import yaml

    found: list[str] = []

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    return found


def test_the_navigation_names_every_page_and_only_pages_that_exist():
    named = nav_pages()
    assert len(named) == len(set(named)), "a page is named twice in the nav"
    missing = [page for page in named if not (REPO / "docs" / page).is_file()]
    assert not missing, f"mkdocs.yml names pages that do not exist: {missing}"
    pages = {str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md")}
    assert not pages - set(named), f"pages outside the nav: {sorted(pages - set(named))}"
    for part in ["guide/reading-rounds.md", "byo/generator.md", "THEORY.md", "experiments/records.md",
                 "api/index.md", "changelog.md"]:
        assert part in named, part


def test_every_public_subpackage_has_an_api_page():
    import lightning_curate

    documented = {m.group(1) for md in (REPO / "docs" / "api").glob("*.md")
                  for m in re.finditer(r"^::: (lightning_curate(?:\.\w+)?)\s*$", md.read_text(), flags=re.M)}
    wanted = {"lightning_curate", *(f"lightning_curate.{name}" for name in
              ["ops", "loop", "data", "models", "rewards", "theory", "store", "metrics", "experiments",
               "preference", "classifiers", "plots"])}
    assert wanted <= documented, sorted(wanted - documented)
    assert lightning_curate.__version__ in (REPO / "CHANGELOG.md").read_text()


RELEASE_TALK = re.compile(r"this release|last release|releases ago|previous release", re.I)
# A measured time, size or speed-up. Lines that state a setting, not a measurement, are listed.
FIGURE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:s|ms|us|min|minutes|seconds|GB|GiB|MB)\b|\b\d+\.\d+x\b")
SETTINGS = ["lock refreshed 12 s ago", "10 minutes without the holder's"]


def guide_pages() -> list[Path]:
    """README and the pages that explain (not the dated records, not the API, not the theory's examples)."""
    docs = REPO / "docs"
    return [REPO / "README.md", docs / "index.md", docs / "GPU.md", docs / "POPULATIONS.md",
            *sorted((docs / "guide").glob("*.md")), *sorted((docs / "byo").glob("*.md"))]


def test_the_readme_is_a_short_users_guide():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert re.search(r"```bash\nmake run\nmake test\n```", text), "the two commands, alone in a bash block"
    assert re.search(r"```bash\npython -m pytest -q\n```", text), "the test command, verbatim"
    assert "make test" in (REPO / ".ci" / "run").read_text().splitlines()[-1]
    assert "data_shape" in text[text.index("## Extension points"):]


def test_guide_pages_hold_no_release_history_and_no_measured_figure():
    bad = []
    for path in guide_pages():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if RELEASE_TALK.search(line) or (FIGURE.search(line) and not any(s in line for s in SETTINGS)):
                bad.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_the_figure_check_catches_a_measured_time():
    assert FIGURE.search("It takes about 30 s on a 2-core CPU") and FIGURE.search("the bench gave 1.24x")
    assert RELEASE_TALK.search("as in the last release")
    assert not FIGURE.search("8 RK4 steps, 512 optimizer steps a round, K = 4")


def hooks():
    pytest.importorskip("griffe")  # the docs extra: pip install -e ".[docs]"
    import importlib.util

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", REPO / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD = {"name": "kchoice_h100", "date": "2026-12-01", "version": "0.2.0",
          "command": "python scripts/bench_kchoice.py",
          "machine": {"platform": "Linux", "cpu": "x86_64", "cores": 16, "torch": "2.13.0", "device": "NVIDIA H100"},
          "figures": {"us_per_call": 126.0, "bandwidth": {"percent_of_peak": 19.5}}}


def test_the_records_hook_renders_every_record(tmp_path):
    import json

    module = hooks()
    (tmp_path / "kchoice_h100.json").write_text(json.dumps(RECORD))
    (tmp_path / "older.json").write_text(json.dumps({**RECORD, "name": "older", "date": "2026-11-01"}))
    records = module.load_records(tmp_path)
    assert [r["name"] for r in records] == ["kchoice_h100", "older"]  # newest first
    page = module.render_records(records)
    assert "| `us_per_call` | 126 |" in page and "| `bandwidth.percent_of_peak` | 19.5 |" in page
    assert "](records/kchoice_h100.json)" in page and "python scripts/bench_kchoice.py" in page
    assert "NVIDIA H100" in page and "2026-11-01" in page
    assert module.render_records([]).startswith("No machine-written record")
    assert "<!-- records -->" in (REPO / "docs" / "experiments" / "records.md").read_text()


@pytest.mark.parametrize("broken, named", [
    ({k: v for k, v in RECORD.items() if k != "date"}, "'date'"),
    ({**RECORD, "figures": [1, 2]}, "'figures'"),
    ({**RECORD, "machine": {"platform": "Linux"}}, "machine lacks cpu, cores, torch, device"),
])
def test_the_records_hook_refuses_a_record_naming_file_and_field(tmp_path, broken, named):
    import json

    module = hooks()
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="bad.json") as err:
        module.load_records(tmp_path)
    assert named in str(err.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a readable JSON record"):
        module.load_records(tmp_path)
