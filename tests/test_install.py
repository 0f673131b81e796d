"""What `make setup` resolves torch to, by pip itself (`--dry-run --report`, metadata only): the CPU build,
never the ~20 nvidia packages of PyPI's default Linux wheel. The first two need a package index and skip,
saying which, where none answers; the refusal resolves against a local stand-in for PyPI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = ROOT / "scripts" / "install.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"


def reachable(index: str) -> bool:
    try:
        urllib.request.urlopen(f"{index}/torch/", timeout=10)
    except OSError:
        return False
    return True


def fresh_machine() -> dict[str, str]:
    """This environment as a fresh Linux machine sees it: no pip configuration, no local wheels."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in {"TORCH_SPEC", "TORCH_INDEX"}}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PYTHON": sys.executable, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def resolve(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """name -> version of what install.sh's torch step would install."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), "--report", str(report)], env=env, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    installs = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def cuda_packages(resolved: dict[str, str]) -> list[str]:
    return sorted(name for name in resolved if name.startswith(("nvidia-", "triton", "cuda-")))


def test_the_configured_sources_give_the_cpu_build(tmp_path):
    """This machine's pip configuration (pip config list), plus the CPU index when it answers."""
    if not (reachable(CPU_INDEX) or reachable(PYPI)):
        pytest.skip(f"neither {CPU_INDEX} nor {PYPI} answers from here")
    env = {k: v for k, v in os.environ.items() if k not in {"TORCH_SPEC", "TORCH_INDEX"}} | {"PYTHON": sys.executable}
    resolved = resolve(tmp_path, env)
    assert resolved["torch"].startswith("2.13.0"), resolved
    assert cuda_packages(resolved) == [], resolved


def test_a_fresh_machine_gets_the_cpu_build_from_the_cpu_index(tmp_path):
    if not reachable(CPU_INDEX):
        pytest.skip(f"{CPU_INDEX} is unreachable from here (only the refusal below can be checked)")
    resolved = resolve(tmp_path, fresh_machine())
    assert resolved["torch"] == "2.13.0+cpu", resolved
    assert cuda_packages(resolved) == [], resolved


# What PyPI's Linux torch 2.13.0 wheel asks for (a few of its ~20 CUDA requirements).
PYPI_TORCH_REQUIRES = ("nvidia-cublas-cu12", "nvidia-cudnn-cu12", "triton", "filelock")


def metadata_only_wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A wheel with nothing in it but its metadata: all `pip install --dry-run` reads."""
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {requirement}\n" for requirement in requires
    )
    wheel = "Wheel-Version: 1.0\nGenerator: kembed-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(directory / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", wheel)
        archive.writestr(f"{dist_info}/RECORD", "")


def pypi_stand_in(directory: Path) -> dict[str, str]:
    """pip settings for a local index that, as PyPI does, offers torch 2.13.0 only with its CUDA packages
    (resolving against PyPI itself took 20 s of metadata downloads for the same answer)."""
    directory.mkdir()
    metadata_only_wheel(directory, "torch", "2.13.0", PYPI_TORCH_REQUIRES)
    for name in PYPI_TORCH_REQUIRES:
        metadata_only_wheel(directory, name, "1.0")
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(directory)}


def test_without_the_cpu_index_a_fresh_machine_is_refused_before_installing_cuda(tmp_path):
    """Where the CPU index cannot be reached and PyPI offers only the CUDA build, install.sh resolves,
    names the CUDA packages and stops. PIP_DRY_RUN keeps a broken guard from installing anything."""
    if reachable(CPU_INDEX):
        pytest.skip(f"{CPU_INDEX} answers here, so the refusal path is not taken")
    env = fresh_machine() | pypi_stand_in(tmp_path / "pypi") | {"PIP_DRY_RUN": "1"}
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), "--torch-only"], env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "refusing: without https://download.pytorch.org/whl/cpu, pip would install torch's CUDA build" in proc.stderr
    assert "nvidia-" in proc.stderr and "Would install" not in proc.stdout
