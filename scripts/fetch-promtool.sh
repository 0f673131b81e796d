#!/usr/bin/env bash
# Makes promtool available for tests/test_alerts.py: from PATH if it is there, else the Debian/Ubuntu package
# `prometheus` (which carries /usr/bin/promtool). Without apt-get (or root/sudo) it says so and exits 0:
# the alert tests then skip, naming the reason.
set -euo pipefail
if command -v promtool >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "fetch-promtool: no apt-get here; install promtool (Prometheus 2.x) on PATH for the alert tests" >&2
    exit 0
fi
if [[ "$(id -u)" == 0 ]]; then
    run=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run=(sudo -n)
else
    echo "fetch-promtool: apt-get needs root; run: sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 0
fi
echo "fetch-promtool: apt-get install prometheus (for promtool)"
"${run[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || { "${run[@]}" apt-get update -q >/dev/null && "${run[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
promtool --version | head -1
