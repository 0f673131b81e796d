#!/usr/bin/env bash
# The one way kembed gets installed: `make setup` and the Dockerfile both run this script, so a
# developer's venv and the image are built by the same steps.
#
#   scripts/install.sh [--dry-run] [--check-python] [--report FILE] [--torch-only] [PIP_INSTALL_ARGS...]
#
#   make setup:  PYTHON=.venv/bin/python scripts/install.sh -e ".[test]"
#   Dockerfile:  PYTHON=/opt/venv/bin/python scripts/install.sh .
#
#   --check-python  only check that PYTHON is a supported version (3.11 to 3.13)
#   --report FILE   only resolve the torch step (pip --dry-run --report FILE): what would be installed
#   --dry-run       print the pip commands instead of running them
#
# Environment:
#   PYTHON       interpreter whose pip installs (default: python3)
#   TORCH_SPEC   torch requirement plus pip options, word-split (default: torch==2.13.0)
#   TORCH_INDEX  extra package index for the torch step (default: PyTorch's CPU wheels,
#                https://download.pytorch.org/whl/cpu). CUDA: TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   PIP_*        pip's own settings apply as usual (PIP_QUIET, PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...)
#
# Why torch first: the package only asks for torch>=2.4; once the pinned wheel is in place pip keeps it,
# so installing the package can never swap in a different (e.g. multi-gigabyte CUDA) torch build.
# Why an extra index: PyPI's Linux torch wheel is the CUDA build (~20 nvidia packages). With PyTorch's CPU
# index as an extra source pip sees 2.13.0+cpu next to PyPI's 2.13.0 and takes the +cpu one (a local
# version sorts after its public one); the same rule picks a local 2.13.0+cpu wheel from pip's configured
# find-links. When the CPU index is unreachable, pip's configured sources must offer a CPU build: the
# script resolves first and refuses, before installing anything, if they would bring CUDA packages.
set -euo pipefail

CPU_INDEX=https://download.pytorch.org/whl/cpu

usage() {
    echo "usage: $0 [--dry-run] [--check-python] [--report FILE] [--torch-only] [PIP_INSTALL_ARGS...]" >&2
    echo "       (e.g. -e \".[test]\" or .)" >&2
    exit 2
}

dry_run=0
torch_only=0
check_only=0
report=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --torch-only) torch_only=1; shift ;;
        --check-python) check_only=1; shift ;;
        --report) [[ $# -ge 2 ]] || usage; report="$2"; torch_only=1; shift 2 ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
if [[ $torch_only -eq 0 && $check_only -eq 0 && $# -eq 0 ]]; then
    usage
fi

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX="${TORCH_INDEX-$CPU_INDEX}"
read -r -a torch_args <<< "$TORCH_SPEC"
if [[ ${#torch_args[@]} -eq 0 ]]; then
    echo "$0: TORCH_SPEC is empty" >&2
    exit 2
fi

# Supported: what kserve 0.21 supports (3.10 to 3.13) from 3.11 on (kembed uses asyncio.TaskGroup).
# Keep equal to requires-python in pyproject.toml (a test checks).
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
    found=$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "not runnable")
    echo "$0: kembed needs Python 3.11, 3.12 or 3.13; $PYTHON is $found (make setup PYTHON=python3.11)" >&2
    exit 1
fi
if [[ $check_only -eq 1 ]]; then
    exit 0
fi

# --dry-run prints each command, shell-quoted, instead of running it.
run() {
    if [[ $dry_run -eq 1 ]]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
    else
        "$@"
    fi
}

reachable() {
    "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "${1%/}/torch/" \
        >/dev/null 2>&1
}

# The pip options that choose where torch comes from.
source_args=()
guard=0
if [[ -n $TORCH_INDEX ]]; then
    if [[ $dry_run -eq 1 ]] || reachable "$TORCH_INDEX"; then
        source_args=(--extra-index-url "$TORCH_INDEX")
    else
        echo "$0: $TORCH_INDEX is unreachable; torch comes from pip's configured sources (pip config list)" >&2
        [[ $TORCH_INDEX == "$CPU_INDEX" ]] && guard=1
    fi
fi

# Resolve only: the packages pip would install for the torch step, as pip's JSON report.
resolve() {
    "$PYTHON" -m pip install --dry-run --ignore-installed --quiet --report "$1" "${torch_args[@]}" \
        ${source_args[@]+"${source_args[@]}"}
}

if [[ -n $report ]]; then
    resolve "$report"
    exit 0
fi

if [[ $guard -eq 1 && $dry_run -eq 0 ]]; then
    plan=$(mktemp)
    trap 'rm -f "$plan"' EXIT
    resolve "$plan"
    cuda=$("$PYTHON" -c '
import json, sys
names = [item["metadata"]["name"] for item in json.load(open(sys.argv[1]))["install"]]
print(" ".join(n for n in names if n.lower().startswith(("nvidia-", "triton", "cuda-"))))' "$plan")
    if [[ -n $cuda ]]; then
        echo "$0: refusing: without $TORCH_INDEX, pip would install torch's CUDA build ($cuda)." >&2
        echo "  Make $TORCH_INDEX reachable, give pip a CPU wheel (find-links), or choose CUDA: TORCH_INDEX=" >&2
        exit 1
    fi
fi

echo "$0: installing ${torch_args[*]}${source_args[*]+ ${source_args[*]}} (the first time, a download of hundreds of MB)" >&2
run "$PYTHON" -m pip install "${torch_args[@]}" ${source_args[@]+"${source_args[@]}"}
if [[ $torch_only -eq 0 ]]; then
    echo "$0: installing $*" >&2
    run "$PYTHON" -m pip install "$@"
fi
