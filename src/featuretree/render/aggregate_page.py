"""graph.html: one self-contained page with the class graphs of an aggregate run (``graph.json``)."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def _static(name: str) -> str:
    return resources.files("featuretree").joinpath("static", name).read_text(encoding="utf-8")


def render_aggregate_html(graph: dict[str, Any], pictures: dict[str, str] | None = None) -> str:
    """The page: graph.json's content and the shared class-graph renderer inlined (no network)."""
    payload = json.dumps({"graph": graph, "pictures": pictures or {}}).replace("</", "<\\/")
    title = html.escape(f"featuretree aggregate: {graph.get('folder', '')}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body><pre id="featuretree-aggregate"></pre>
<script>const FT_AGGREGATE = {payload};
document.getElementById("featuretree-aggregate").textContent = JSON.stringify(FT_AGGREGATE.graph, null, 1);</script>
</body></html>
"""
