"""`pip install .` and `pip install -e .` both give a working `chanprune` console script, and install
the CLI as `chanprune_cli` (no top-level `cli` package).

Offline and without downloading torch again: each test makes a fresh venv whose site-packages has a
`.pth` line pointing at the running interpreter's site-packages (torch, click, setuptools, ...), then
installs a copy of the checkout with `--no-deps --no-build-isolation --no-index`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                ".hypothesis", "runs", "*.onnx")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(cmd: list, *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def _make_venv(root: Path) -> Path:
    """A venv that sees the running interpreter's packages through a .pth file (a venv made from a
    venv's python would not). pip itself comes from there too (`--without-pip`: faster, offline)."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    py = venv / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    assert purelib.is_relative_to(venv), purelib
    purelib.mkdir(parents=True, exist_ok=True)
    outer = sysconfig.get_paths()["purelib"]
    (purelib / "zz_outer_site_packages.pth").write_text(outer + "\n")
    _run([py, "-c", "import click, setuptools, torch"], cwd=root)
    return venv


def _copy_repo(root: Path) -> Path:
    src = root / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    return src


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-editable"])
def test_pip_install_gives_working_cli(tmp_path, editable):
    venv = _make_venv(tmp_path)
    src = _copy_repo(tmp_path)
    py, script = venv / "bin" / "python", venv / "bin" / "chanprune"
    before = sorted(p.name for p in src.iterdir())

    _run([py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          *(["-e"] if editable else []), src], cwd=tmp_path, timeout=180)

    assert script.exists(), sorted(p.name for p in (venv / "bin").iterdir())
    help_ = _run([script, "--help"], cwd=tmp_path)
    assert "Usage:" in help_.stdout
    assert "check" in help_.stdout
    check_help = _run([script, "check", "--help"], cwd=tmp_path)
    assert "--arch" in check_help.stdout
    version = _run([script, "--version"], cwd=tmp_path)
    assert version.stdout.strip() == "chanprune, version 0.1.0"

    # The CLI is the installed copy's (the checkout's own editable install is not visible here),
    # and only `chanprune_cli` is importable: no top-level `cli` (cwd is outside any checkout).
    probe = _run([py, "-c", "import importlib.util as u, chanprune, chanprune_cli, chanprune_cli.main\n"
                  "print(chanprune_cli.__file__); print(chanprune.__file__); print(u.find_spec('cli'))"], cwd=tmp_path)
    cli_file, pkg_file, cli_spec = probe.stdout.strip().splitlines()
    home = src if editable else venv
    assert Path(cli_file).is_relative_to(home), cli_file
    assert Path(pkg_file).is_relative_to(home), pkg_file
    assert cli_spec == "None"
    if editable:
        assert Path(cli_file) == src / "cli" / "__init__.py"
    else:
        assert Path(cli_file).parent.name == "chanprune_cli"
        site = Path(cli_file).parents[1]
        assert not (site / "cli").exists()
        assert (site / "chanprune" / "measure").is_dir()
        assert not (site / "tests").exists()
        # the build wrote nothing into the source tree but the usual by-products
        after = sorted(p.name for p in src.iterdir())
        assert set(after) - set(before) <= {"build", "chanprune.egg-info"}
