"""The Triton source folder ``kernels/`` ships as ``lightning_curate.kernels``.

The rule: ``kernels`` must never become a top-level import name (a PyPI
package owns it), and both an editable and a wheel install must import
``lightning_curate.kernels``. Each import runs in a fresh interpreter whose
working directory is outside the repository, so the checkout itself is not
on ``sys.path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = ROOT / "kernels" / "kchoice_triton.py"
PRINT_KERNEL_FILE = (
    "import importlib.util, lightning_curate.kernels.kchoice_triton as m; "
    "print(m.__file__); "
    "spec = importlib.util.find_spec('kernels'); "
    "print(spec.origin if spec else None)"
)


def _python(code: str, cwd: Path, env_extra: dict | None = None, timeout: float = 120) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip().splitlines()


def _assert_no_top_level_kernels(origin: str) -> None:
    """A top-level ``kernels`` may exist (the PyPI package), but never ours."""
    if origin != "None":
        assert not Path(origin).resolve().is_relative_to(ROOT), origin


def test_current_environment_install(tmp_path):
    """The environment running the tests (CI: ``pip install -e .``) imports the kernels."""
    # Asked from outside the checkout: in it, an in-tree *.egg-info would answer.
    code = (
        "import json; from importlib.metadata import distribution, PackageNotFoundError\n"
        "try:\n"
        "    d = distribution('lightning-curate')\n"
        "except PackageNotFoundError:\n"
        "    print('missing')\n"
        "else:\n"
        "    u = d.read_text('direct_url.json')\n"
        "    print('editable' if u and json.loads(u).get('dir_info', {}).get('editable') else 'regular')\n"
    )
    kind = _python(code, cwd=tmp_path)[-1]
    if kind == "missing":
        pytest.skip("lightning-curate is not installed in this environment (pip install -e .)")
    kernel_file, top_level = _python(PRINT_KERNEL_FILE, cwd=tmp_path)
    if kind == "editable":
        assert Path(kernel_file).resolve() == KERNEL_SOURCE.resolve()
    else:
        assert Path(kernel_file).parts[-3:] == ("lightning_curate", "kernels", "kchoice_triton.py")
    _assert_no_top_level_kernels(top_level)


def test_editable_install_maps_kernels_into_the_package(tmp_path):
    """Build the PEP 660 editable wheel of this checkout, install it by hand, import."""
    wheel_dir, site_dir = tmp_path / "wheel", tmp_path / "site"
    wheel_dir.mkdir()
    name = _python(
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.build_editable({str(wheel_dir)!r}))",
        cwd=ROOT,
    )[-1]
    with zipfile.ZipFile(wheel_dir / name) as whl:
        whl.extractall(site_dir)
        finders = [n for n in whl.namelist() if n.endswith("_finder.py")]
    # Static check: setuptools maps the package onto the repository's kernels/ folder.
    assert finders, f"no editable finder in {name}"
    finder_text = (site_dir / finders[0]).read_text()
    assert repr("lightning_curate.kernels") in finder_text
    assert repr(str(ROOT / "kernels")) in finder_text
    assert "'kernels':" not in finder_text
    # Dynamic check: a fresh interpreter with that site dir imports the kernel source.
    run = tmp_path / "elsewhere"
    run.mkdir()
    kernel_file, top_level = _python(
        f"import site; site.addsitedir({str(site_dir)!r}); " + PRINT_KERNEL_FILE, cwd=run)
    assert Path(kernel_file).resolve() == KERNEL_SOURCE.resolve()
    _assert_no_top_level_kernels(top_level)


def test_wheel_ships_kernels_inside_the_package(tmp_path):
    # Build from a copy so build/ and *.egg-info never land in the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for item in ("lightning_curate", "kernels"):
        shutil.copytree(ROOT / item, src / item, ignore=ignore)
    for item in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / item).exists():
            shutil.copy2(ROOT / item, src / item)
    wheel_dir = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(wheel_dir), str(src)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = wheel_dir.glob("lightning_curate-*.whl")

    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        assert "lightning_curate/kernels/kchoice_triton.py" in names
        assert "lightning_curate/kernels/__init__.py" in names
        assert not [n for n in names if n.startswith("kernels/")], names
        top_levels = {n.split("/")[0] for n in names}
        assert top_levels <= {"lightning_curate"} | {n for n in top_levels if n.endswith(".dist-info")}
        site_dir = tmp_path / "site"
        whl.extractall(site_dir)

    run = tmp_path / "elsewhere"
    run.mkdir()
    kernel_file, top_level = _python(PRINT_KERNEL_FILE, cwd=run, env_extra={"PYTHONPATH": str(site_dir)})
    assert Path(kernel_file).resolve().is_relative_to(site_dir.resolve()), kernel_file
    assert Path(kernel_file).resolve() == (site_dir / "lightning_curate/kernels/kchoice_triton.py").resolve()
    _assert_no_top_level_kernels(top_level)
