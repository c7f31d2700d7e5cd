#!/usr/bin/env bash
# One command: set up (dev extras) and run lint plus the whole test suite, then the architecture
# matrix (torchvision and timm models) in its own environment. Arguments go to the main pytest run
# and skip the matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/lint-imports  # the layer contracts in pyproject.toml
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/setup_vision.sh
  FEATURETREE_REQUIRE_VISION=1 .venv-vision/bin/python -m pytest -q -p no:cacheprovider tests/test_vision_models.py
fi
