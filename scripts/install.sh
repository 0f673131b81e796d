#!/usr/bin/env bash
# The one way kembed gets installed: `make setup` and the Dockerfile both run this script, so a
# developer's venv and the image are built by the same steps.
#
#   scripts/install.sh [--dry-run] [--torch-only] [PIP_INSTALL_ARGS...]
#
#   make setup:  PYTHON=.venv/bin/python scripts/install.sh -e ".[test]"
#   Dockerfile:  PYTHON=/opt/venv/bin/python scripts/install.sh .
#
# Environment:
#   PYTHON      interpreter whose pip installs (default: python3)
#   TORCH_SPEC  torch requirement plus pip options, word-split (default: torch==2.13.0);
#               CUDA: TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#   PIP_*       pip's own settings apply as usual (PIP_QUIET, PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...)
#
# Why torch first: the package only asks for torch>=2.4; once the pinned wheel is in place pip keeps it,
# so installing the package can never swap in a different (e.g. multi-gigabyte CUDA) torch build.
set -euo pipefail

usage() {
    echo "usage: $0 [--dry-run] [--torch-only] [PIP_INSTALL_ARGS...]  (e.g. -e \".[test]\" or .)" >&2
    exit 2
}

dry_run=0
torch_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --torch-only) torch_only=1; shift ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
if [[ $torch_only -eq 0 && $# -eq 0 ]]; then
    usage
fi

PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
read -r -a torch_args <<< "$TORCH_SPEC"
if [[ ${#torch_args[@]} -eq 0 ]]; then
    echo "$0: TORCH_SPEC is empty" >&2
    exit 2
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

run "$PYTHON" -m pip install "${torch_args[@]}"
if [[ $torch_only -eq 0 ]]; then
    run "$PYTHON" -m pip install "$@"
fi
