"""The explorer's API on models beyond the zoo: layouts in the chain listing, and the guided views of a
model where guided backprop is undefined listed as unavailable and refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from featuretree.loading import load_explainer
from featuretree.server import ServerSettings, create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

SILU = f"{Path(__file__).resolve().parent / 'exemplar_models.py'}:silu_maxpool"


def test_a_silu_model_lists_its_guided_views_as_unavailable_and_refuses_them():
    explainer = load_explainer(SILU, None, "cpu")
    client = TestClient(create_app(ServerSettings(models=(SILU,), prefetch=False), loader=lambda name, device: explainer))
    params = {"model": SILU, "image": "chelsea"}
    analysis = client.get("/api/analysis", params=params).json()
    assert set(analysis["unavailable_views"]) == {"guided", "guided_original"}
    assert "silu" in analysis["unavailable_views"]["guided"]
    assert [c["layout"] for c in analysis["chain"]] == ["channels_first", "channels_first", "channels_first", "vector"]
    root = analysis["default_root"]
    ok = client.get("/api/expand", params={**params, "path": root, "k": 2, "view": "heatmap"})
    assert ok.status_code == 200 and len(ok.json()["children"]) == 2
    for view in ("guided", "guided_original"):
        refused = client.get("/api/expand", params={**params, "path": root, "k": 2, "view": view})
        assert refused.status_code == 400, refused.text
        assert "not available for this model" in refused.json()["problem"] and "silu" in refused.json()["problem"]
    rule = client.get("/api/children", params={**params, "path": root, "rule": "guided"})
    assert rule.status_code == 400 and "guided backprop is defined only" in rule.json()["problem"]
