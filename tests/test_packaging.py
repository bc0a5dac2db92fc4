"""A built wheel is the whole tool: installed without the source tree, it lists every variant and
sweep (shipped as package data), and the only top-level package it installs is ``ablate``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_without_the_source_tree(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
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
