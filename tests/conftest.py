from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

import featuretree as ft
from featuretree.core.samples import sample_path


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def square_picture(size: int = 32, box: tuple[int, int, int, int] = (8, 8, 23, 23)) -> Image.Image:
    img = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(img).rectangle(box, fill="white")
    return img


@pytest.fixture
def square_image() -> Image.Image:
    return square_picture()


@pytest.fixture
def toy_explainer() -> ft.Explainer:
    return ft.Explainer.from_zoo("toy_squares")


@pytest.fixture(scope="session")
def _lite0_once() -> ft.Explainer:
    return ft.Explainer.from_zoo("efficientnet_lite0")


@pytest.fixture
def lite0(request, _lite0_once) -> ft.Explainer:
    """The real EfficientNet-Lite0 (seconds to load): only for tests marked slow."""
    if request.node.get_closest_marker("slow") is None:
        pytest.fail(f"{request.node.nodeid} loads the EfficientNet-Lite0 weights: mark it @pytest.mark.slow")
    return _lite0_once


@pytest.fixture(scope="session")
def _chelsea_once(_lite0_once) -> ft.Analysis:
    return _lite0_once.analyze(sample_path("chelsea"))


@pytest.fixture
def chelsea_analysis(lite0, _chelsea_once) -> ft.Analysis:
    return _chelsea_once


def all_hooks_removed(module: torch.nn.Module) -> bool:
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return False
    return torch._C._len_torch_function_stack() == 0
