"""Exemplar indexing with the hand-set toy net on generated squares whose ranking is known by construction."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featuretree.cli import main
from featuretree.core.errors import LayerError, UnitError
from featuretree.exemplars import exemplar_grid_png
from featuretree.exemplars.db import DatabaseError, ExemplarDB
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import load_explainer

from .kill_helpers import kill_after

ROOT = Path(__file__).resolve().parents[1]
SLOW_MODEL = f"{ROOT / 'tests' / 'exemplar_models.py'}:slow_toy"
TOP = 5
SIDE = 10


def make_squares(folder: Path, count: int, seed: int = 0, start: int = 0) -> dict[str, tuple[int, int, int]]:
    """``count`` 32x32 images, each one white-ish square of a distinct brightness: name -> (brightness, row, col)."""
    rng = np.random.default_rng(seed)
    levels = rng.permutation(np.arange(130, 256, 2))[:count]
    truth = {}
    folder.mkdir(parents=True, exist_ok=True)
    for k, level in enumerate(levels):
        r, c = (int(v) for v in rng.integers(3, 32 - SIDE - 3, 2))
        img = np.zeros((32, 32, 3), np.uint8)
        img[r : r + SIDE, c : c + SIDE] = level
        name = f"sub{(start + k) % 3}/sq{start + k:03d}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / name)
        truth[name] = (int(level), r, c)
    return truth


def dump(db_path: Path) -> dict:
    """Everything a user can read from a database, independent of internal row ids."""
    with ExemplarDB(db_path) as db:
        conn = db.conn
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        images = sorted(conn.execute("SELECT path, sha256, status, width, height FROM images"))
        rows = conn.execute(
            "SELECT e.layer, e.unit, e.rank, i.path, e.value, e.row, e.col, e.box_left, e.box_top, e.box_right, e.box_bottom, b.png "
            "FROM exemplars e JOIN images i ON i.id = e.image_id LEFT JOIN blobs b ON b.sha256 = e.crop"
        ).fetchall()
        blobs = conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0]
    entries = {(r[0], r[1], r[2]): (r[3], r[5], r[6], r[7:11], r[11]) for r in rows}
    values = {(r[0], r[1], r[2]): r[4] for r in rows}
    return {"images": images, "entries": entries, "values": values, "blobs": blobs}


def assert_same(a: dict, b: dict) -> None:
    assert a["images"] == b["images"]
    assert a["entries"].keys() == b["entries"].keys()
    assert a["entries"] == b["entries"]
    assert a["values"] == pytest.approx(b["values"], rel=1e-5, abs=1e-6)
    assert a["blobs"] == b["blobs"]


def index(folder: Path, db: Path, model: str = "toy_squares", workers: int = 0, **kw):
    explainer = load_explainer(model, None, "cpu")
    return index_folder(folder, db, explainer, model, top_n=TOP, batch_size=4, workers=workers, progress=False, **kw)


def test_index_top_images_known_by_construction(tmp_path):
    truth = make_squares(tmp_path / "imgs", 30)
    report = index(tmp_path / "imgs", tmp_path / "ex.db")
    assert report.indexed == 30 and not report.skipped
    brightest = sorted(truth, key=lambda n: -truth[n][0])[:TOP]
    with ExemplarDB(tmp_path / "ex.db") as db:
        assert db.meta()["top_n"] == TOP
        # Every edge unit, every corner and the "square" logit rise with the square's brightness.
        for layer, unit in [("edges", u) for u in range(5)] + [("corners", u) for u in range(4)] + [("classifier", 0)]:
            entries = db.exemplars(layer, unit)
            assert [e.path for e in entries] == brightest, (layer, unit)
            assert [e.rank for e in entries] == list(range(TOP))
            assert all(a.value > b.value for a, b in zip(entries, entries[1:]))
        # edges:0 (dark -> bright, left to right) peaks one column left of the square, inside its rows.
        for e in db.exemplars("edges", 0):
            level, r, c = truth[e.path]
            assert e.col == c - 1 and r <= e.row < r + SIDE
            assert e.value == pytest.approx(level / 255, rel=1e-4)
            left, top, right, bottom = e.box
            assert left <= e.col < right and top <= e.row < bottom
        # corners:0 (top-left) peaks at the square's top-left corner.
        for e in db.exemplars("corners", 0):
            _, r, c = truth[e.path]
            assert abs(e.row - r) <= 1 and abs(e.col - c) <= 1
            crop = Image.open(io.BytesIO(db.blob(e.crop)))
            assert crop.size == (e.box[2] - e.box[0], e.box[3] - e.box[1])
        # One entry per image per unit.
        dup = db.conn.execute("SELECT COUNT(*) FROM (SELECT layer, unit, image_id FROM exemplars GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)")
        assert dup.fetchone()[0] == 0


def test_index_kill_and_resume_equals_single_run(tmp_path):
    folder = tmp_path / "imgs"
    make_squares(folder, 44)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    reference = tmp_path / "reference.db"
    index(folder, reference, model=SLOW_MODEL)

    db_path = tmp_path / "killed.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "featuretree.cli", "index", str(folder), "--model", SLOW_MODEL, "--out", str(db_path)]
    command += ["--top", str(TOP), "--batch-size", "4", "--workers", "2", "--quiet"]
    committed = kill_after(command, env, db_path, 12)
    assert 12 <= committed < 45  # killed part-way

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{committed} already indexed" in rerun.stdout
    assert_same(dump(db_path), dump(reference))


def test_index_incremental_merge_equals_single_run(tmp_path):
    everything = tmp_path / "all"
    make_squares(everything, 20, seed=1)
    make_squares(everything, 20, seed=2, start=20)
    index(everything, tmp_path / "single.db")

    growing = tmp_path / "growing"
    make_squares(growing, 20, seed=1)
    first = index(growing, tmp_path / "grown.db")
    make_squares(growing, 20, seed=2, start=20)
    second = index(growing, tmp_path / "grown.db")
    assert (first.indexed, second.indexed, second.already) == (20, 20, 20)
    # The roots differ, so compare through the relative paths only.
    assert_same(dump(tmp_path / "grown.db"), dump(tmp_path / "single.db"))
    # Nothing new: a third run changes nothing.
    third = index(growing, tmp_path / "grown.db")
    assert third.indexed == 0 and third.already == 40
    assert_same(dump(tmp_path / "grown.db"), dump(tmp_path / "single.db"))


def test_index_reports_and_skips_bad_files(tmp_path, capsys):
    folder = tmp_path / "imgs"
    make_squares(folder, 6)
    good = (folder / "sub0/sq000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("this is not a JPEG")
    (folder / "empty.webp").write_bytes(b"")
    (folder / "readme.txt").write_text("notes")
    db_path = tmp_path / "ex.db"
    code = main(["index", str(folder), "--model", "toy_squares", "--out", str(db_path), "--top", "3", "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "6 images indexed" in out and "3 skipped" in out
    for name in ("truncated.png", "text.jpg", "empty.webp", "readme.txt"):
        assert name in out
    with ExemplarDB(db_path) as db:
        assert db.counts() == {"ok": 6, "skipped": 3}
        bad = {p for (p,) in db.conn.execute("SELECT path FROM images WHERE status = 'skipped'")}
        assert bad == {"truncated.png", "text.jpg", "empty.webp"}
        used = {p for (p,) in db.conn.execute("SELECT DISTINCT i.path FROM exemplars e JOIN images i ON i.id = e.image_id")}
        assert used.isdisjoint(bad)
    # A re-run still lists them, and fixing a file gets it indexed.
    (folder / "text.jpg").unlink()
    Image.open(io.BytesIO(good)).save(folder / "text.jpg")
    assert main(["index", str(folder), "--model", "toy_squares", "--out", str(db_path), "--top", "3", "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 images indexed" in out and "truncated.png" in out
    # A different model on the same database is refused with a one-line fix.
    assert main(["index", str(folder), "--model", SLOW_MODEL, "--out", str(db_path), "--quiet"]) == 2
    assert "choose a new --out" in capsys.readouterr().err


def test_exemplar_grid_and_units_sheet(tmp_path, capsys):
    make_squares(tmp_path / "imgs", 12)
    db_path = tmp_path / "ex.db"
    index(tmp_path / "imgs", db_path)
    png = exemplar_grid_png(db_path, "corners", 0)
    grid = Image.open(io.BytesIO(png))
    assert grid.format == "PNG" and grid.width > 2 * grid.height * 0.8
    with ExemplarDB(db_path) as db:
        entries = db.exemplars("corners", 0)
        assert all(e.recon is not None for e in entries)  # computed once, cached
        # Guided backprop of the top-left corner: it is made of the dark->bright (left to right) edge
        # below it, so the column right of the corner is brighter than the column left of it. (This
        # used the edges layer while boxes were a 3-pixel estimate; the engine's box of an edges
        # position is 1 pixel, since its opposite-signed kernels cancel when all channels are seeded.)
        for e in entries:
            recon = np.asarray(Image.open(io.BytesIO(db.blob(e.recon))).convert("L"), dtype=float)
            assert recon.shape == (e.box[3] - e.box[1], e.box[2] - e.box[0])
            col = e.col - e.box[0]
            assert recon[:, col + 1].mean() > recon[:, col - 1].mean()
        untouched = db.exemplars("corners", 1)
        assert all(e.recon is None for e in untouched)
    assert exemplar_grid_png(db_path, "corners", 0) == png  # served from the cache, same bytes
    with pytest.raises(LayerError, match="did you mean 'edges'"):
        exemplar_grid_png(db_path, "edge", 0)
    with pytest.raises(UnitError, match="0..4"):
        exemplar_grid_png(db_path, "edges", 5)
    with pytest.raises(DatabaseError):
        exemplar_grid_png(tmp_path / "missing.db", "edges", 0)

    sheet = tmp_path / "sheet.png"
    assert main(["units", str(db_path), "--layer", "corners", "--out", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert out.count("corners:") == 5 and Image.open(sheet).width > 100
    assert main(["units", str(db_path), "--layer", "nope"]) == 2
    assert "no layer 'nope'" in capsys.readouterr().err


def test_index_relevance_ranking_per_class(tmp_path, capsys):
    from featuretree.core.units import Unit

    folder = tmp_path / "imgs"
    truth = make_squares(folder, 30, seed=3)
    db_path = tmp_path / "ex.db"
    assert (
        main(
            [
                "index",
                str(folder),
                "--model",
                "toy_squares",
                "--out",
                str(db_path),
                "--top",
                str(TOP),
                "--relevance-class",
                "square",
                "--quiet",
            ]
        )
        == 0
    )
    by_level = sorted(truth, key=lambda n: -truth[n][0])
    explainer = load_explainer("toy_squares", None, "cpu")
    with ExemplarDB(db_path) as db:
        assert db.rankings() == ["activation", "class:0"]
        # Corners feed "square" with positive weights: the most relevant images are the brightest ...
        assert [e.path for e in db.exemplars("corners", 0, ranking="class:0")] == by_level[:TOP]
        # ... while the distractor (weight -0.5) is least harmful on the dimmest squares, though it fires most on the brightest.
        assert [e.path for e in db.exemplars("corners", 4, ranking="class:0")] == by_level[::-1][:TOP]
        assert [e.path for e in db.exemplars("corners", 4)] == by_level[:TOP]
        # Identity with the engine: relevance of a corners unit = its gradient x activation contribution to the class.
        for unit in (0, 2, 4):
            for e in db.exemplars("corners", unit, ranking="class:0"):
                expected = explainer.analyze(folder / e.path).contributions((Unit("classifier", 0),))[unit]
                assert e.value == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    grid = Image.open(io.BytesIO(exemplar_grid_png(db_path, "corners", 4, ranking="class:0")))
    assert grid.format == "PNG"
    with pytest.raises(UnitError, match="no ranking 'class:1'"):
        exemplar_grid_png(db_path, "corners", 4, ranking="class:1")
    # The set of rankings is part of the database: adding images without it is refused.
    assert main(["index", str(folder), "--model", "toy_squares", "--out", str(db_path), "--top", str(TOP), "--quiet"]) == 2
    assert "--relevance-class" in capsys.readouterr().err
    assert main(["units", str(db_path), "--layer", "corners", "--ranking", "class:0", "--out", str(tmp_path / "s.png")]) == 0
