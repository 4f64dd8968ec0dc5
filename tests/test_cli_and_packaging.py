"""The installed command, the import namespace, and the torch-free core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from avbind_testing import avbind_exe

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("realtime", "models", "export")


def _avbind(*args: str, env: dict | None = None, exe: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([exe or avbind_exe(), *args], capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_subcommand_and_each_runs() -> None:
    from avbind.realtime.cli import build_parser

    result = _avbind("--help")
    assert result.returncode == 0, result.stderr
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name in subcommands:
        assert name in result.stdout
        sub_help = _avbind(name, "--help")
        assert sub_help.returncode == 0, (name, sub_help.stderr)


def test_models_lists_each_configuration() -> None:
    from avbind.models.config import CONFIGS

    result = _avbind("models")
    assert result.returncode == 0, result.stderr
    for name in CONFIGS:
        assert name in result.stdout
    assert "avbind-s*" in result.stdout  # the default is marked
    rows = json.loads(_avbind("models", "--cost", "--json").stdout)
    assert [r["name"] for r in rows] == list(CONFIGS)
    for row in rows:
        assert row["parameters"] > 100_000 and row["macs_per_step"] > 1_000_000
        assert row["state_bytes"] == 4 * row["state_elements"] > 0
    bad = _avbind("models", "avbind-nope")
    assert bad.returncode != 0 and "avbind-nope" in bad.stderr


_NO_TORCH = """
import importlib, pkgutil, sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
import avbind.realtime
for info in pkgutil.walk_packages(avbind.realtime.__path__, "avbind.realtime."):
    importlib.import_module(info.name)
import avbind.models.config
from avbind.realtime.cli import cli
cli(["models"])  # listing needs no torch ...
try:
    cli(["models", "--cost"])  # ... counting the cost does
except SystemExit as exit:
    print("EXIT", exit.code)
"""


def test_realtime_core_runs_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "avbind-s*" in result.stdout  # the configurations listed without torch
    # The torch-backed option says what to install instead of failing with a traceback.
    assert "EXIT avbind models --cost needs PyTorch" in result.stdout


def test_every_package_folder_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "avbind." + str(init.parent.relative_to(REPO)).replace(os.sep, ".")
        for top in TOP_LEVEL
        for init in (REPO / top).rglob("__init__.py")
    }
    assert on_disk == listed


@pytest.mark.slow
def test_built_wheel_installs_under_the_avbind_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist")],
        check=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("avbind-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("avbind/", "avbind-")) for n in names), names
    for top in TOP_LEVEL:
        assert f"avbind/{top}/__init__.py" in names

    # A clean venv with only the wheel; dependencies come from this interpreter's site-packages via
    # PYTHONPATH, which (unlike a site dir) does not run the editable install's .pth hook, so the
    # repository checkout cannot shadow the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    probe = (
        "import importlib.util, avbind.realtime, avbind.models.network, avbind.export;"
        "print(avbind.models.network.__file__);"
        "print(importlib.util.find_spec('models'))"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, bare_models = result.stdout.split()
    assert module_file.startswith(str(venv)), module_file
    assert bare_models == "None"
    listed = _avbind("models", "avbind-xs", env=env, exe=str(venv / "bin" / "avbind"))
    assert listed.returncode == 0 and "avbind-xs" in listed.stdout, listed.stderr
