#!/usr/bin/env bash
# Create .venv-vision for the architecture matrix (tests/test_vision_models.py): PyPI's torch with
# torchvision and timm. It cannot share .venv: PyPI's torchvision fails to import beside the pinned
# CPU torch wheel. About 6 GB (torch's CUDA build, which runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-vision/bin/python ]; then
  "$PYTHON" -m venv .venv-vision
fi
.venv-vision/bin/python -m pip install -q --upgrade pip
.venv-vision/bin/python -m pip install -q "torch==${VISION_TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
.venv-vision/bin/python -m pip install -q -e ".[dev,vision]"
