"""The box stored for an exemplar entry is the engine's receptive field of that layer and position
on that entry's image, recomputed independently here with a fresh explainer."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featuretree.cli import main
from featuretree.evidence.receptive_field import receptive_fields
from featuretree.exemplars.db import ENGINE_BOXES, SCHEMA_VERSION, DatabaseError, ExemplarDB
from featuretree.exemplars.indexer import blank_analysis, index_folder
from featuretree.loading import load_explainer

from .test_exemplars_index import TOP, make_squares

ROOT = Path(__file__).resolve().parents[1]
SILU_MAXPOOL = f"{ROOT / 'tests' / 'exemplar_models.py'}:silu_maxpool"


def make_noise(folder: Path, count: int, seed: int, start: int = 0) -> None:
    """Textured images (noise, a bright blob): many different maxima positions per unit."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        img = rng.integers(0, 120, (40, 40, 3)).astype(np.uint8)
        r, c = (int(v) for v in rng.integers(0, 30, 2))
        img[r : r + 10, c : c + 10] += 120
        Image.fromarray(img).save(folder / f"noise{start + k:03d}.png")


def counting(explainer) -> list:
    """Record every analysis the explainer makes (the indexer's box pass included)."""
    made: list = []
    analyze = explainer.analyze

    def wrapped(image, *args, **kw):
        made.append(image)
        return analyze(image, *args, **kw)

    explainer.analyze = wrapped
    return made


def index(folder: Path, db: Path, explainer, spec: str, **kw):
    return index_folder(folder, db, explainer, spec, top_n=TOP, batch_size=4, workers=0, progress=False, **kw)


def index_squares(tmp_path: Path, count: int):
    """``count`` generated square images in tmp_path/imgs, indexed with the toy net into tmp_path/ex.db:
    (folder, database path, the explainer that indexed them)."""
    folder = tmp_path / "imgs"
    make_squares(folder, count)
    db_path = tmp_path / "ex.db"
    explainer = load_explainer("toy_squares", None, "cpu")
    index(folder, db_path, explainer, "toy_squares")
    return folder, db_path, explainer


def assert_engine_boxes(db_path: Path, spec: str) -> int:
    """Every stored box equals receptive_fields(analysis of the entry's image, layer, [position]) from a
    fresh explainer (no cache shared with the indexer). Returns the number of entries checked."""
    engine = load_explainer(spec, None, "cpu")
    analyses: dict[Path, object] = {}
    checked = 0
    with ExemplarDB(db_path) as db:
        for ranking in db.rankings():
            for rec in db.layers():
                for e in db.exemplars(rec.name, ranking=ranking):
                    analysis = analyses.get(e.file) or analyses.setdefault(e.file, engine.analyze(e.file))
                    position = (e.row, e.col) if rec.rf["kind"] == "spatial" else None
                    expected = receptive_fields(analysis, rec.name, [position])[0]
                    assert e.box == expected, (ranking, rec.name, e.unit, e.path, e.row, e.col)
                    checked += 1
    return checked


def test_toy_boxes_are_the_engines_computed_once_per_position(tmp_path):
    folder = tmp_path / "imgs"
    make_squares(folder, 24)
    explainer = load_explainer("toy_squares", None, "cpu")
    assert blank_analysis(explainer).record.fixed_linearisation
    made = counting(explainer)
    index(folder, tmp_path / "ex.db", explainer, "toy_squares", relevance_classes=[0])
    # Fixed linearisation: one blank analysis when the database is created, one for the boxes; no image is analysed.
    assert len(made) == 2 and all(not isinstance(m, (str, Path)) for m in made)
    assert assert_engine_boxes(tmp_path / "ex.db", "toy_squares") > 100
    with ExemplarDB(tmp_path / "ex.db") as db:
        positions = {(e.layer, e.row, e.col) for r in db.rankings() for rec in db.layers()[:-1] for e in db.exemplars(rec.name, ranking=r)}
        boxes = {e.box for e in db.exemplars("corners")}
        assert len(boxes) > 5  # positions differ, so do boxes
        assert all(rec.rf["boxes"] == ENGINE_BOXES for rec in db.layers())
        assert {rec.rf["kind"] for rec in db.layers()} == {"spatial", "vector"}
    # Each distinct (layer, position) was computed once, into the explainer's shared cache.
    assert len(explainer.receptive_fields) == explainer.receptive_fields.misses == len(positions)

    # A later run (a new process: a cold explainer) reads the boxes of known positions from the database.
    make_squares(folder, 12, seed=5, start=24)
    cold = load_explainer("toy_squares", None, "cpu")
    index(folder, tmp_path / "ex.db", cold, "toy_squares", relevance_classes=[0])
    with ExemplarDB(tmp_path / "ex.db") as db:
        now = {(e.layer, e.row, e.col) for r in db.rankings() for rec in db.layers()[:-1] for e in db.exemplars(rec.name, ranking=r)}
    assert now - positions and cold.receptive_fields.misses == len(now - positions)
    assert assert_engine_boxes(tmp_path / "ex.db", "toy_squares") > 100


def test_image_dependent_model_boxes_come_from_each_entrys_image(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 12, seed=1)
    explainer = load_explainer(SILU_MAXPOOL, None, "cpu")
    blank = blank_analysis(explainer)
    assert not blank.record.fixed_linearisation
    made = counting(explainer)
    first = index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL)
    assert first.indexed == 12 and not first.blank_boxes
    with ExemplarDB(tmp_path / "ex.db") as db:
        used = {e.image_id for rec in db.layers() if rec.rf["kind"] == "spatial" for e in db.exemplars(rec.name)}
    # Two blank analyses (layers, then vector layers' boxes), then one forward per image with spatial entries.
    assert len(made) == 2 + len(used)

    # Grow the folder: entries that stay keep their boxes; only images with new entries are analysed again.
    make_noise(folder, 12, seed=2, start=12)
    made.clear()
    second = index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL)
    assert second.indexed == 12
    with ExemplarDB(tmp_path / "ex.db") as db:
        now = {e.image_id for rec in db.layers() if rec.rf["kind"] == "spatial" for e in db.exemplars(rec.name)}
    # Two blank analyses again (the layers' layouts, the vector layers' boxes), then the new images.
    assert len(now - used) > 0 and len(made) == 2 + len(now - used)

    assert assert_engine_boxes(tmp_path / "ex.db", SILU_MAXPOOL) > 100
    # The boxes really are per image: a blank image's box differs for some entry, as do two images' boxes of one position.
    differs_from_blank = 0
    per_position: dict[tuple[str, int, int], set] = {}
    with ExemplarDB(tmp_path / "ex.db") as db:
        for rec in db.layers()[:-1]:
            for e in db.exemplars(rec.name):
                differs_from_blank += e.box != receptive_fields(blank, rec.name, [(e.row, e.col)])[0]
                per_position.setdefault((rec.name, e.row, e.col), set()).add(e.box)
    assert differs_from_blank > 0
    assert any(len(boxes) > 1 for boxes in per_position.values())


def test_missing_file_gets_a_stand_in_box_until_found_again(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 8, seed=3)
    explainer = load_explainer(SILU_MAXPOOL, None, "cpu")
    index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL, finish=False)
    moved = tmp_path / "moved"
    (folder / "noise000.png").rename(moved)
    report = index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL)
    assert [f for f, _ in report.blank_boxes] == ["noise000.png"]
    assert [f for f, _ in report.missing_crops] == ["noise000.png"]
    assert "blank image" in report.format()
    moved.rename(folder / "noise000.png")
    again = index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL)
    assert not again.blank_boxes and not again.missing_crops
    assert_engine_boxes(tmp_path / "ex.db", SILU_MAXPOOL)


def downgrade_to_version_1(db_path: Path) -> None:
    """Make a database look like one written by the version-1 indexer: stride/offset geometry in
    layers.rf and boxes of another algorithm (here: all shifted one pixel)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        for name, rf in conn.execute("SELECT name, rf FROM layers").fetchall():
            kind = json.loads(rf)["kind"]
            old = {"kind": kind, "channels": 5, "height": 32, "width": 32, "stride": [1.0, 1.0], "offset": [-1, 2, -1, 2], "size": 32}
            conn.execute("UPDATE layers SET rf = ? WHERE name = ?", (json.dumps(old), name))
        conn.execute("UPDATE exemplars SET box_right = box_right + 1 WHERE box_right < 32")
        conn.execute("UPDATE schema_version SET version = 1")


def test_version_1_database_is_upgraded_and_its_boxes_replaced(tmp_path):
    folder, db_path, explainer = index_squares(tmp_path, 12)
    with ExemplarDB(db_path) as db:
        good = {(e.layer, e.unit, e.image_id): (e.box, db.blob(e.crop)) for rec in db.layers() for e in db.exemplars(rec.name)}
    downgrade_to_version_1(db_path)

    with ExemplarDB(db_path) as db:  # still readable: the old entries stay until the next finishing pass
        assert db.conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert {rec.rf["boxes"] for rec in db.layers()} == {"estimate"}
        assert any(e.box != good[e.layer, e.unit, e.image_id][0] for e in db.exemplars("corners"))
    report = index(folder, db_path, explainer, "toy_squares")
    assert report.indexed == 0 and report.already == 12
    with ExemplarDB(db_path) as db:
        assert {rec.rf["boxes"] for rec in db.layers()} == {ENGINE_BOXES}
        now = {(e.layer, e.unit, e.image_id): (e.box, db.blob(e.crop)) for rec in db.layers() for e in db.exemplars(rec.name)}
    assert now == good  # boxes recomputed, crops recut to them
    assert_engine_boxes(db_path, "toy_squares")


def test_unknown_schema_version_is_refused_in_one_line(tmp_path, capsys):
    _, db_path, _ = index_squares(tmp_path, 4)
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = 4")
    with pytest.raises(DatabaseError, match="schema version 4"):
        ExemplarDB(db_path)
    assert main(["units", str(db_path), "--layer", "corners"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "schema version 4" in err


def test_a_model_without_guided_backprop_gets_no_reconstructions(tmp_path):
    """Reconstructions are guided backprop: on a SiLU model they are refused with the reason (the unit
    grids then show the patches alone), whether asked for up front or on first view."""
    from featuretree.core.errors import GuidedUndefinedError
    from featuretree.exemplars.indexer import reconstruct

    folder = tmp_path / "imgs"
    make_noise(folder, 6, seed=3)
    explainer = load_explainer(SILU_MAXPOOL, None, "cpu")
    index(folder, tmp_path / "ex.db", explainer, SILU_MAXPOOL)
    with ExemplarDB(tmp_path / "ex.db") as db:
        entries = db.exemplars("deep", 0)
    with pytest.raises(GuidedUndefinedError, match="silu"):
        reconstruct(explainer, entries[:1])
    with pytest.raises(GuidedUndefinedError, match="silu"):
        index(folder, tmp_path / "again.db", explainer, SILU_MAXPOOL, reconstructions=True)


def test_each_indexed_image_records_the_class_the_model_predicts_and_units_summarise_their_exemplars(tmp_path):
    folder, db_path, _ = index_squares(tmp_path, 12)
    engine = load_explainer("toy_squares", None, "cpu")
    with ExemplarDB(db_path) as db:
        rows = db.conn.execute("SELECT id, path, top_class, top_probability FROM images WHERE status = 'ok'").fetchall()
        assert len(rows) == 12
        predicted = {}
        for image_id, rel, top_class, probability in rows:
            analysis = engine.analyze(Image.open(folder / rel).convert("RGB"))  # an independent forward pass per file
            assert top_class == int(analysis.logits.argmax())
            assert probability == pytest.approx(float(analysis.probabilities.max()), rel=1e-5)
            predicted[image_id] = top_class
        for unit in range(5):
            entries = db.exemplars("corners", unit)
            counts: dict[int, int] = {}
            for e in entries:
                counts[predicted[e.image_id]] = counts.get(predicted[e.image_id], 0) + 1
            expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            assert db.exemplar_classes("corners", unit) == (expected, len(entries))


def test_version_2_database_gains_the_prediction_columns_empty(tmp_path):
    _, db_path, _ = index_squares(tmp_path, 4)
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("ALTER TABLE images DROP COLUMN top_class")
        conn.execute("ALTER TABLE images DROP COLUMN top_probability")
        conn.execute("UPDATE schema_version SET version = 2")
    with ExemplarDB(db_path) as db:
        assert db.conn.execute("SELECT version FROM schema_version").fetchone()[0] == 3
        assert db.conn.execute("SELECT COUNT(*) FROM images WHERE top_class IS NULL").fetchone()[0] == 4
        assert db.exemplar_classes("corners", 0) == ([], 0)  # nothing recorded: nothing claimed
