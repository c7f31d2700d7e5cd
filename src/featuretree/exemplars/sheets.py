"""Pictures from an exemplar database: one unit's grid, and a contact sheet of a whole layer."""

from __future__ import annotations

import io
import math
import os

from PIL import Image, ImageDraw

from ..core.errors import GuidedUndefinedError
from ..render.pictures import png_bytes
from .db import ACTIVATION, Exemplar, ExemplarDB

TILE = 64
GAP = 2
PANEL_GAP = 10
HEADER = 16
BACKGROUND = (34, 34, 34)
EMPTY = (60, 60, 60)
TEXT = (235, 235, 235)


def _fit(image: Image.Image | None, tile: int) -> Image.Image:
    """Scale a crop to fill ``tile`` on its longer side (nearest for strong upscaling), centred on dark grey."""
    canvas = Image.new("RGB", (tile, tile), EMPTY)
    if image is None:
        return canvas
    scale = tile / max(image.size)
    resample = Image.NEAREST if scale >= 3 else Image.BICUBIC
    scaled = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    canvas.paste(scaled, ((tile - scaled.width) // 2, (tile - scaled.height) // 2))
    return canvas


def _open(png: bytes | None) -> Image.Image | None:
    return Image.open(io.BytesIO(png)).convert("RGB") if png else None


def _panel(images: list[Image.Image | None], columns: int, tile: int) -> Image.Image:
    rows = max(1, math.ceil(len(images) / columns))
    panel = Image.new("RGB", (columns * tile + (columns - 1) * GAP, rows * tile + (rows - 1) * GAP), BACKGROUND)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        panel.paste(_fit(image, tile), (c * (tile + GAP), r * (tile + GAP)))
    return panel


def unit_grid(
    entries: list[Exemplar],
    patches: list[bytes | None],
    reconstructions: list[bytes | None] | None,
    title: str,
    slots: int,
    tile: int = TILE,
) -> Image.Image:
    """[image patches | reconstructions], best first, row by row; empty slots stay grey."""
    columns = max(1, math.ceil(math.sqrt(slots)))
    pad = [None] * max(0, slots - len(entries))
    left = _panel([_open(p) for p in patches] + pad, columns, tile)
    panels = [left]
    if reconstructions is not None:
        panels.append(_panel([_open(p) for p in reconstructions] + pad, columns, tile))
    width = sum(p.width for p in panels) + PANEL_GAP * (len(panels) - 1) + 2 * GAP
    sheet = Image.new("RGB", (width, left.height + HEADER + 2 * GAP), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP + 2, 2), title, fill=TEXT)
    x = GAP
    for panel in panels:
        sheet.paste(panel, (x, HEADER + GAP))
        x += panel.width + PANEL_GAP
    return sheet


def exemplar_grid(
    db: ExemplarDB,
    layer: str,
    unit: int,
    explainer=None,
    reconstructions: bool = True,
    limit: int | None = None,
    ranking: str = ACTIVATION,
) -> Image.Image:
    """The exemplar grid of one unit; missing reconstructions are computed (loading the db's model
    unless ``explainer`` is given) and cached in the database."""
    from .indexer import ensure_reconstructions

    db.check_unit(layer, unit)
    db.check_ranking(ranking)
    top_n = int(db.meta().get("top_n", 16))
    slots = min(limit or top_n, top_n)
    entries = db.exemplars(layer, unit, limit=slots, ranking=ranking)
    patches = [db.blob(ex.crop) for ex in entries]
    try:
        recons = ensure_reconstructions(db, entries, explainer) if reconstructions and entries else ([] if reconstructions else None)
    except GuidedUndefinedError:  # reconstructions are guided backprop, undefined for this model: patches only
        recons = None
    what = "max" if ranking == ACTIVATION else f"relevance to {ranking}"
    best = f"  {what} {entries[0].value:.3g}" if entries else "  (no images indexed)"
    return unit_grid(entries, patches, recons, f"{layer}:{unit}{best}", slots)


def exemplar_grid_png(
    db_path: str | os.PathLike[str],
    layer: str,
    unit: int,
    explainer=None,
    reconstructions: bool = True,
    limit: int | None = None,
    ranking: str = ACTIVATION,
) -> bytes:
    """PNG bytes of one unit's exemplar grid [image patches | guided-backprop reconstructions].

    Raises DatabaseError / LayerError / UnitError (FeatureTreeError subclasses) for a missing
    database, an unknown layer or an out-of-range unit. Pass the server's ``explainer`` (the
    model the database was built with) to avoid loading the model again for reconstructions.
    ``ranking`` is "activation" (default) or "class:K" when the index was built with relevance to class K.
    """
    with ExemplarDB(db_path) as db:
        image = exemplar_grid(db, layer, unit, explainer, reconstructions, limit, ranking)
    return png_bytes(image, compress_level=6)


def contact_sheet(
    db: ExemplarDB, layer: str, per_unit: int = 4, tile: int = 32, columns: int | None = None, ranking: str = ACTIVATION
) -> Image.Image:
    """Every unit of ``layer`` as a small mosaic of its best ``per_unit`` patches, labelled with its index."""
    rec = db.layer(layer)
    db.check_ranking(ranking)
    crops: dict[int, list[bytes | None]] = {u: [] for u in range(rec.channels)}
    for ex in db.exemplars(layer, limit=per_unit, ranking=ranking):
        crops[ex.unit].append(db.blob(ex.crop))
    side = max(1, math.ceil(math.sqrt(per_unit)))
    cell_w = side * tile + (side - 1) * GAP
    label = 12
    cell_h = cell_w + label
    columns = columns or max(1, math.ceil(math.sqrt(rec.channels * cell_h / cell_w)))
    rows = math.ceil(rec.channels / columns)
    pad = 6
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad) + pad + HEADER), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), f"{layer}: {rec.channels} units, best {per_unit} patches each by {ranking}", fill=TEXT)
    for unit in range(rec.channels):
        r, c = divmod(unit, columns)
        x, y = pad + c * (cell_w + pad), HEADER + pad + r * (cell_h + pad)
        images = [_open(p) for p in crops[unit]] + [None] * (per_unit - len(crops[unit]))
        sheet.paste(_panel(images, side, tile), (x, y + label))
        draw.text((x, y), str(unit), fill=TEXT)
    return sheet
