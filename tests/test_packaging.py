"""What a user installs: the wheel runs without a checkout, carries its licence and data, and the declared
dependency floors are the versions CI tests."""

import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "NOTICE", "zsharm"]  # what the wheel is built from


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def pins() -> dict:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pinned = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {canonicalize_name(r.name): Version(next(iter(r.specifier)).version) for r in pinned}


def test_every_dependency_floor_is_the_version_ci_tests():
    tested = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in tested, f"{name} has no pin in constraints.txt"
        assert requirement.specifier.contains(tested[name]), f"{name}: tested {tested[name]} outside {requirement}"
        floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert len(floors) == 1, f"{requirement} needs one floor"
        length = len(floors[0].release)
        assert floors[0].release == tested[name].release[:length], f"{name}: floor {floors[0]}, tested {tested[name]}"


def test_the_demo_shipped_in_the_package_is_the_checkouts():
    shipped = REPO / "zsharm" / "assets" / "demo"
    names = sorted(p.name for p in (REPO / "data" / "demo").iterdir())
    assert sorted(p.name for p in shipped.iterdir()) == names
    for name in names:
        assert (shipped / name).read_bytes() == (REPO / "data" / "demo" / name).read_bytes(), name


def run(*argv, cwd, env) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
    return done.stdout


def test_the_wheel_runs_help_the_tiny_demo_and_figures_without_a_checkout(tmp_path):
    # build from a copy, so no stale build/ of the checkout leaks in; offline: no build isolation
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSHARM_CACHE")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ZSHARM_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist",
        source, cwd=tmp_path, env=env)
    wheel = next((tmp_path / "dist").glob("zsharm-*.whl"))
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: NOTICE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"zsharm/assets/clip/bpe_simple_vocab_16e6.txt.gz", "zsharm/assets/demo/composite.png",
            "zsharm/assets/demo/mask.png", "zsharm/assets/demo/caption.txt",
            "zsharm/assets/userstudy.html"} <= names
    assert not any(n.startswith(("tests/", "data/", "notebooks/")) for n in names)

    # a venv of its own holding only zsharm; the other packages are this environment's (no download)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    target = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                      cwd=tmp_path, env=env).strip())
    (target / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel,
        cwd=tmp_path, env=env)
    where = run(python, "-c", "import zsharm.demo as d; print(d.__file__); print(d.demo_folder())",
                cwd=tmp_path, env=env).split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's copy, not the checkout
    zsharm = venv / "bin" / "zsharm"

    helped = run(zsharm, "--help", cwd=tmp_path, env=env)
    assert all(command in helped for command in ("harmonize", "describe", "evaluate", "ablate", "figures"))
    demo = Path(where[1])
    run(zsharm, "harmonize", demo / "composite.png", "--mask", demo / "mask.png", "--model", "tiny", "--device",
        "cpu", "--no-evaluator", "--steps", "2", "--size", "64", "--no-edges", "--quiet", "--source",
        "astronaut bright warm indoor", "--target", "astronaut dim blue twilight", "--out", "out.png",
        cwd=tmp_path, env=env)
    assert (tmp_path / "out.png").is_file()
    run(zsharm, "figures", "--only", "pipeline,decision-trace", "--out", "figs", "--quiet", cwd=tmp_path, env=env)
    assert sorted(p.suffix for p in (tmp_path / "figs").iterdir()) == [".png", ".png"]
