"""graph.html: one self-contained page with the class graphs of an aggregate run (``graph.json``).

The page inlines the shared renderers (``static/tree_view.js`` and ``static/aggregate_view.js`` with
their CSS, the same files the explorer serves) and its pictures as data URIs: it opens from file://
with no network.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def _static(name: str) -> str:
    return resources.files("featuretree").joinpath("static", name).read_text(encoding="utf-8")


def render_aggregate_html(graph: dict[str, Any], pictures: dict[str, Any] | None = None) -> str:
    """The page: graph.json's content, the shared class-graph renderer and (``pictures``, from
    ``aggregate.pictures.graph_pictures``) each unit's top images with its maps on them."""
    payload = json.dumps({"graph": graph, "pictures": pictures}).replace("</", "<\\/")
    labels = [g["label"] or g["root"] for g in graph.get("graphs", [])]
    what = labels[0] if len(labels) == 1 else f"{len(labels)} classes"
    title = html.escape(f"featuretree aggregate: {what} ({graph.get('folder', '')})")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>body {{ margin: 0; background: #f3f5f8; }}
{_static("tree_view.css")}
{_static("aggregate_view.css")}</style></head>
<body><div id="featuretree-aggregate"></div>
<script>{_static("tree_view.js")}</script>
<script>{_static("aggregate_view.js")}</script>
<script>const FT_AGGREGATE = {payload};
FeatureTreeView.renderAggregatePage(document.getElementById("featuretree-aggregate"), FT_AGGREGATE.graph, FT_AGGREGATE.pictures);</script>
</body></html>
"""
