#!/usr/bin/env bash
# One command on a fresh machine: set up, then explain the bundled cat photo with EfficientNet-Lite0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/featuretree explain --out featuretree-demo
echo "Open featuretree-demo/tree.html in a browser (works offline, from file://)."
