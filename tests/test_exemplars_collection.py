"""The default exemplar collection and a real EfficientNet-Lite0 index over part of it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from featuretree.evidence.receptive_field import receptive_fields
from featuretree.exemplars import exemplar_grid_png
from featuretree.exemplars.collection import CROPS, available_photos, build_collection
from featuretree.exemplars.db import ExemplarDB
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import load_explainer


def test_exemplar_collection_is_real_photos_and_stable(tmp_path):
    photos = available_photos()
    assert len(photos) >= 10  # the featuretree samples plus other skimage photographs
    files = build_collection(tmp_path / "c")
    assert len(files) == len(photos) * len(CROPS)
    for path in files[:: len(CROPS)]:
        with Image.open(path) as img:
            assert img.format == "JPEG" and max(img.size) <= 512 and min(img.size) > 32
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert build_collection(tmp_path / "c") == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # kept, so an index over it stays valid


@pytest.mark.slow
def test_index_efficientnet_exemplars_match_engine_logits(tmp_path):
    folder = tmp_path / "c"
    for path in build_collection(tmp_path / "all"):
        if path.stem.split("__")[0] in ("chelsea", "coffee", "rocket", "astronaut") and path.stem.endswith(("full", "centre")):
            folder.mkdir(exist_ok=True)
            (folder / path.name).write_bytes(path.read_bytes())
    explainer = load_explainer("efficientnet_lite0", "_blocks.14,_fc", "cpu")
    db_path = tmp_path / "ex.db"
    report = index_folder(folder, db_path, explainer, "efficientnet_lite0", top_n=3, batch_size=4, workers=1, progress=False)
    assert report.indexed == 8 and not report.skipped
    cat = explainer.analyze(folder / "chelsea__full.jpg")
    cls = cat.top_classes(1)[0].index
    with ExemplarDB(db_path) as db:
        best = db.exemplars("_fc", cls)
        # The cat photo's own top class is best excited by a crop of the cat photo ...
        assert best[0].path.startswith("chelsea__")
        # ... and the stored value is the engine's logit for that image (same preprocessing, same model).
        entry = {e.path: e for e in best}["chelsea__full.jpg"]
        assert entry.value == pytest.approx(float(cat.logits[cls]), rel=1e-3, abs=1e-3)
        # Spatial units: value = the channel's spatial max in the engine's own forward pass.
        unit = 7
        for e in db.exemplars("_blocks.14", unit):
            act = explainer.analyze(folder / e.path).activation("_blocks.14")[0, unit]
            assert e.value == pytest.approx(float(act.max()), rel=1e-3, abs=1e-3)
            assert (e.row, e.col) == divmod(int(act.argmax()), act.shape[1])
        # Boxes: the engine's receptive field of the entry's position on its own image. The index
        # computed them once per position from a blank image; recompute them cold from each image.
        assert explainer.analyze(folder / "coffee__full.jpg").record.fixed_linearisation
        explainer.receptive_fields.clear()
        analyses = {}
        entries = db.exemplars("_blocks.14")
        assert len({(e.row, e.col) for e in entries}) > 5
        for e in entries:
            analysis = analyses.get(e.path) or analyses.setdefault(e.path, explainer.analyze(e.file))
            assert e.box == receptive_fields(analysis, "_blocks.14", [(e.row, e.col)])[0], (e.unit, e.path)
        assert all(e.box == (0, 0, 224, 224) for e in best)
    grid = Image.open(io.BytesIO(exemplar_grid_png(db_path, "_blocks.14", unit, explainer=explainer)))
    assert grid.width > grid.height
