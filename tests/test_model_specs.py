"""Model specs, weights files and the proposed default chain, in the main environment (no torchvision
or timm here: their models are covered by tests/test_vision_models.py in .venv-vision)."""

from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch
from torch import nn

import featuretree as ft
from featuretree.analysis.discovery import default_chain
from featuretree.core.errors import ModelError, OptionError
from featuretree.loading import load_explainer, model_options
from featuretree.models.library import load_weights

from .layout_models import TokenNet
from .test_scores_reference import make_net


def test_the_proposed_chain_is_the_trunks_blocks_then_the_logits():
    assert default_chain(make_net("residual"), 16) == ["0", "1", "2", "3.fc"]
    assert default_chain(TokenNet(), 32) == ["embed", "block1", "block2", "head.fc"]


def test_a_model_the_proposal_cannot_run_gets_a_clear_error():
    with pytest.raises(ModelError, match="pass --layers"):
        default_chain(TokenNet(), 48)  # its position embedding fixes 32 px


def test_a_block_is_represented_by_its_activation_and_pooling_layers_are_skipped():
    # conv, norm, relu at one shape: the relu stands for the block; the max pool is not a block.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 5),
    )
    assert default_chain(net, 16) == ["2", "5", "7"]
    # The proposal is what a custom module gets without --layers.
    tree = ft.Explainer(net, default_chain(net, 16), preprocess=ft.Preprocess(size=16)).explain(
        torch.rand(1, 3, 16, 16), depth=2, k=2, images=False
    )
    assert tree.root.layer == "7" and [c.layer for c in tree.root.children] == ["5", "5"]


def test_weights_load_from_a_checkpoint_with_prefixed_keys_and_a_wrong_file_is_refused(tmp_path):
    torch.manual_seed(0)
    source, target = make_net("plain"), make_net("plain")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ckpt.pt")
    load_weights(target, tmp_path / "ckpt.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    torch.save({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in source.state_dict().items()}, tmp_path / "wider.pt")
    with pytest.raises(ModelError, match="do not fit the model: size mismatch"):
        load_weights(target, tmp_path / "wider.pt")
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="do not fit the model"):
        load_weights(target, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not found"):
        load_weights(target, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_weights(target, tmp_path / "junk.pt")


def test_library_models_need_weights_or_an_explicit_random_weights():
    with pytest.raises(ModelError, match="never downloads"):
        load_explainer("torchvision:resnet18", None, "cpu")
    with pytest.raises(OptionError, match="torchvision:NAME and timm:NAME"):
        load_explainer("efficientnet_lite0", None, "cpu", weights="w.pt")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_missing_library_is_a_clear_error():
    with pytest.raises(ModelError, match="pip install torchvision"):
        load_explainer("torchvision:resnet18", None, "cpu", random_weights=True)


@pytest.mark.parametrize("item", ["blocks.3", "=tokens", "blocks.3="])
def test_bad_layout_options_are_refused(item):
    with pytest.raises(OptionError, match="--layout LAYER=KIND"):
        model_options(argparse.Namespace(layout=[item], weights=None, random_weights=False))


def test_layout_options_reach_the_explainer():
    options = model_options(argparse.Namespace(layout=["_fc=vector", " _head_act = channels_first"], weights=None, random_weights=False))
    assert options["layouts"] == {"_fc": "vector", "_head_act": "channels_first"}
    explainer = load_explainer("toy_squares", None, "cpu", layouts={"classifier": "vector"})
    assert explainer.layouts == {"classifier": "vector"}


def test_an_exemplar_database_refuses_images_from_other_weights(tmp_path):
    """The same model spec with other weights (as --weights or --random-weights can give) must not add to
    a database built with the first ones."""
    from featuretree.exemplars.db import DatabaseError
    from featuretree.exemplars.indexer import index_folder

    from .conftest import square_picture

    folder = tmp_path / "imgs"
    folder.mkdir()
    square_picture().save(folder / "a.png")
    first = ft.Explainer.from_zoo("toy_squares")
    index_folder(folder, tmp_path / "ex.db", first, "toy_squares", top_n=2, batch_size=2, workers=0, progress=False)
    other = ft.Explainer.from_zoo("toy_squares")
    assert other.weights_fingerprint() == first.weights_fingerprint()
    with torch.no_grad():
        next(other.model.parameters()).add_(0.01)
    assert other.weights_fingerprint() != first.weights_fingerprint()
    square_picture(box=(4, 6, 20, 22)).save(folder / "b.png")
    with pytest.raises(DatabaseError, match="weights"):
        index_folder(folder, tmp_path / "ex.db", other, "toy_squares", top_n=2, batch_size=2, workers=0, progress=False)
