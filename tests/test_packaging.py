"""A built wheel is the whole tool: installed without the source tree, it lists every variant and
sweep (shipped as package data), and the only top-level package it installs is ``ablate``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_without_the_source_tree(tmp_path):
    # build from a copy of the tracked files, so the checkout gets no build/ folder
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            (source / name).symlink_to(os.readlink(ROOT / name))
        else:
            shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("ablate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("ablate-")} == {"ablate"}
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    # run from an empty directory with the installed copy first on the path (not the checkout)
    env = {**os.environ, "PYTHONPATH": str(target)}
    script = ("import ablate, sys; from ablate.cli import main; print(ablate.__file__); "
              "sys.exit(main(['variants']) or main(['sweep', 'nope']) != 2)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(target))
    shipped = sorted(p.stem for p in (ROOT / "variants").glob("*.yaml"))
    for name in shipped:
        assert f"| {name} " in out.stdout, name
    sweeps = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert "shipped sweep: " + ", ".join(sweeps) in out.stderr
