#!/usr/bin/env bash
# One command: set up (dev extras) and run lint plus the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/lint-imports  # the layer contracts in pyproject.toml
.venv/bin/python -m pytest -q "$@"
