"""Interventions on several units at once: the result equals a hand-written forward pass with those
channels multiplied by the scale, on every layout; the CLI's --json and the HTTP API report it."""

from __future__ import annotations

import json

import pytest
import torch

import featuretree as ft
from featuretree.analysis.interventions import intervene, intervention_result
from featuretree.core.errors import UnitError
from featuretree.core.units import Unit

from .layout_models import CHAIN, IMAGE, TOKEN_CHAIN, ChannelsLastNet, TokenNet
from .test_cli import assert_clean_error, run_main, square_png  # noqa: F401 - square_png is a fixture
from .test_scores_reference import make_net


def hand_forward(net, x, scaled: dict[int, list[int]], axes: dict[int, int], scale: float) -> torch.Tensor:
    """Run the stages one by one, multiplying the listed channels of stage i's output by ``scale``."""
    with torch.no_grad():
        h = x
        for i, stage in enumerate(net):
            h = stage(h)
            if i in scaled:
                factors = torch.ones(h.shape[axes[i]], dtype=h.dtype)
                factors[scaled[i]] = scale
                shape = [1] * h.dim()
                shape[axes[i]] = -1
                h = h * factors.view(shape)
        return h


@pytest.mark.parametrize(
    ("make", "chain", "scaled", "axes"),
    [
        (lambda: make_net("residual"), ["0", "1", "2", "3"], {1: [0, 3], 2: [2]}, {1: 1, 2: 1}),
        (lambda: ChannelsLastNet().double(), CHAIN, {0: [1], 2: [0, 5]}, {0: 3, 2: 3}),
        (lambda: TokenNet().double(), TOKEN_CHAIN, {1: [4], 2: [0, 2]}, {1: 2, 2: 2}),
    ],
)
@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_an_intervention_equals_a_hand_written_masked_forward_pass(make, chain, scaled, axes, scale):
    torch.manual_seed(11)
    net = make().eval()
    size = 16 if chain[0] == "0" else IMAGE
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    analysis = ft.Explainer(net, chain, preprocess=ft.Preprocess(size=size)).analyze(x)
    units = [Unit(chain[i], c) for i, channels in scaled.items() for c in channels]
    output, _ = intervene(analysis, units, scale)
    torch.testing.assert_close(output, hand_forward(net, x, scaled, axes, scale), rtol=1e-12, atol=1e-12)
    result = intervention_result(analysis, units, scale)
    root = int(analysis.logits.argmax())
    assert result.root == f"{chain[-1]}:{root}"
    assert result.root_before == pytest.approx(float(analysis.logits[root]))
    assert result.root_after == pytest.approx(float(output[0, root]))
    assert result.top_after[0]["probability"] == pytest.approx(float(output[0].softmax(0).max()))
    # The classes that were on top, after: their own logits and probabilities of the hand-written pass.
    after = output[0].double()
    assert [c["index"] for c in result.top_before_after] == [c["index"] for c in result.top_before]
    for entry in result.top_before_after:
        assert entry["logit"] == pytest.approx(float(after[entry["index"]]), rel=1e-6)
        assert entry["probability"] == pytest.approx(float(after.softmax(0)[entry["index"]]), rel=1e-6)
    # No hook stays behind.
    assert not any(m._forward_hooks for m in net.modules())


def test_bad_units_are_refused():
    analysis = ft.Explainer(make_net("plain"), ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(
        torch.rand(1, 3, 16, 16, dtype=torch.float64)
    )
    with pytest.raises(UnitError, match="out of range"):
        intervene(analysis, [Unit("1", 99)])
    with pytest.raises(UnitError, match="no units"):
        intervene(analysis, [])


def test_cli_ablate_json_reports_the_top_classes_and_the_root_before_and_after(capsys, square_png):  # noqa: F811
    code, out, err = run_main(
        capsys, ["ablate", square_png, "--model", "toy_squares", "--units", "corners:0,corners:1,corners:2,corners:3", "--json"]
    )
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"top_before", "top_after", "root_before", "root_after", "units", "scale"}
    for entry in data["top_before"] + data["top_after"]:
        assert set(entry) == {"index", "name", "logit", "probability"}
    # Every corner detector zeroed: the square class loses its evidence.
    assert data["root_after"] < data["root_before"]
    code, _, err = run_main(capsys, ["ablate", square_png, "--model", "toy_squares", "--units", "corners:99"])
    assert_clean_error(code, err, "out of range")
    code, _, err = run_main(capsys, ["ablate", square_png, "--model", "toy_squares", "--units", "corners:0", "--scale", "nan"])
    assert_clean_error(code, err, "--scale")


def test_api_intervene_equals_the_engine_and_rejects_bad_input():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from featuretree.server import ServerSettings, create_app

    client = TestClient(create_app(ServerSettings(models=("toy_squares",), prefetch=False)))
    body = {"model": "toy_squares", "image": "chelsea", "units": ["corners:0", "edges:1"], "scale": 0.5}
    r = client.post("/api/intervene", json=body)
    assert r.status_code == 200, r.text
    analysis = client.app.state.workspace.analysis("toy_squares", "chelsea")
    expected = intervention_result(analysis, [Unit("corners", 0), Unit("edges", 1)], 0.5)
    assert r.json() == json.loads(json.dumps(expected.to_dict()))
    bad = client.post("/api/intervene", json={**body, "units": ["corners:99"]})
    assert bad.status_code == 400 and "out of range" in bad.json()["problem"]
    assert client.post("/api/intervene", json={**body, "units": []}).status_code == 422


def test_the_public_analysis_intervenes_by_unit_names():
    analysis = ft.Explainer(make_net("plain"), ["0", "1", "2", "3"], preprocess=ft.Preprocess(size=16)).analyze(
        torch.rand(1, 3, 16, 16, dtype=torch.float64)
    )
    by_name = analysis.intervene(["1:0", "2:3"], 0.5)
    assert by_name == intervention_result(analysis, [Unit("1", 0), Unit("2", 3)], 0.5)
