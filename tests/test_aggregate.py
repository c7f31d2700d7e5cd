"""``featuretree aggregate``: class graphs recounted from independent per-image trees, resumption after
kill -9, a grown or changed folder, and bad input."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featuretree.aggregate.db import AggregateDB, rows_of
from featuretree.aggregate.run import aggregate_folder
from featuretree.aggregate.worker import TreeSettings
from featuretree.cli import main
from featuretree.loading import ModelSpec

from .kill_helpers import kill_after

ROOT = Path(__file__).resolve().parents[1]
VARIED = f"{ROOT / 'tests' / 'exemplar_models.py'}:varied_classes"  # its images predict different classes
SLOW_TOY = f"{ROOT / 'tests' / 'exemplar_models.py'}:slow_toy"


def make_noise(folder: Path, count: int, seed: int = 0, start: int = 0) -> list[str]:
    """``count`` 32x32 images of smooth random colour fields (names sorted by index)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(start, start + count):
        coarse = rng.random((4, 4, 3))
        img = np.kron(coarse, np.ones((8, 8, 1))) * 255
        name = f"img{k:03d}.png"
        Image.fromarray(img.astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def run(folder: Path, out: Path, model: str = VARIED, root: str | None = None, depth: int = 3, k: int = 3, **kw):
    spec = ModelSpec(model)
    return aggregate_folder(folder, out, spec.load(), spec, TreeSettings(root=root, depth=depth, k=k), progress=False, **kw)


def graph_of(out: Path) -> dict:
    return json.loads((out / "graph.json").read_text())


def carried(node, above: float = 1.0):
    """(unit, fraction of the root's evidence) of every node: the product of the shares down its path."""
    yield node.path[-1], above
    for child in node.children:
        yield from carried(child, above * child.share)


def test_class_graph_equals_a_recount_of_independent_trees(tmp_path):
    names = make_noise(tmp_path / "imgs", 12)
    report = run(tmp_path / "imgs", tmp_path / "out")
    assert report.aggregated == 12 and not report.skipped
    graph = graph_of(tmp_path / "out")

    # Independent trees, one explain() per file, grouped by predicted class.
    explainer = ModelSpec(VARIED).load()
    channels = {info.name: info.channels for info in explainer.analyze(tmp_path / "imgs" / names[0]).chain}
    trees: dict[str, list] = {}
    for name in names:
        tree = explainer.explain(tmp_path / "imgs" / name, depth=3, k=3, images=False)
        trees.setdefault(tree.root.path[-1], []).append(tree)
    assert len(trees) > 1, "the test needs images of several predicted classes"
    assert sorted((g["root"], g["images"]) for g in graph["graphs"]) == sorted((r, len(t)) for r, t in trees.items())

    for g in graph["graphs"]:
        group = trees[g["root"]]
        n = len(group)
        # Root edges: in how many images, and the mean of their scores (exact: each is one tree edge).
        root_edges = {}
        for tree in group:
            for child in tree.root.children:
                root_edges.setdefault(child.path[-1], []).append(child.score)
        got = {e["target"]: e for e in g["edges"] if e["source"] == g["root"]}
        assert got.keys() == root_edges.keys()
        for target, scores in root_edges.items():
            assert got[target]["images"] == len(scores)
            assert got[target]["mean_score"] == math.fsum(scores) / len(scores)
            assert got[target]["stable"] == (len(scores) / n >= 0.5)
        # Every unit: in how many images, its mean carried share, and the chance rate of its layer.
        per_unit: dict[str, list[float]] = {}
        per_layer: dict[str, int] = {}
        for tree in group:
            mine: dict[str, float] = {}
            for unit, share in carried(tree.root):
                mine[unit] = mine.get(unit, 0.0) + share
            for unit, share in mine.items():
                per_unit.setdefault(unit, []).append(share)
                per_layer[unit.rpartition(":")[0]] = per_layer.get(unit.rpartition(":")[0], 0) + 1
        nodes = {node["id"]: node for node in g["nodes"]}
        assert nodes.keys() == per_unit.keys()
        for unit, shares in per_unit.items():
            assert nodes[unit]["images"] == len(shares)
            assert nodes[unit]["mean_share"] == pytest.approx(sum(shares) / len(shares), rel=1e-12)
            if unit != g["root"]:
                layer = unit.rpartition(":")[0]
                assert nodes[unit]["chance"] == per_layer[layer] / (n * channels[layer])
        assert nodes[g["root"]]["mean_share"] == 1.0 and nodes[g["root"]]["images"] == n


def test_one_class_root_and_stable_threshold(tmp_path):
    make_noise(tmp_path / "imgs", 6)
    run(tmp_path / "imgs", tmp_path / "out", root="class:1", depth=2, stable=0.3)
    graph = graph_of(tmp_path / "out")
    assert [g["root"] for g in graph["graphs"]] == ["fc:1"] and graph["graphs"][0]["images"] == 6
    assert graph["settings"]["root"] == "class:1" and graph["settings"]["stable"] == 0.3
    edges = graph["graphs"][0]["edges"]
    assert {e["stable"] for e in edges} == {True, False}  # the threshold splits this graph
    assert all(e["stable"] == (e["images"] / 6 >= 0.3) for e in edges)
    assert "FT_AGGREGATE" in (tmp_path / "out" / "graph.html").read_text()


def test_grown_and_changed_folder_equals_a_fresh_run(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 5)
    first = run(folder, tmp_path / "grown", depth=2)
    assert first.aggregated == 5
    make_noise(folder, 3, seed=1, start=5)  # the folder grows
    make_noise(folder, 1, seed=2, start=2)  # and one file changes (img002)
    second = run(folder, tmp_path / "grown", depth=2)
    assert second.aggregated == 4 and second.already == 4
    run(folder, tmp_path / "fresh", depth=2)
    with AggregateDB(tmp_path / "grown" / "aggregate.db") as a, AggregateDB(tmp_path / "fresh" / "aggregate.db") as b:
        assert rows_of(a) == rows_of(b)
    assert graph_of(tmp_path / "grown") == {**graph_of(tmp_path / "fresh"), "folder": graph_of(tmp_path / "grown")["folder"]}
    third = run(folder, tmp_path / "grown", depth=2)  # nothing new
    assert third.aggregated == 0 and third.already == 8


def test_kill9_then_resume_equals_one_uninterrupted_run(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 24)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    run(folder, tmp_path / "reference", model=SLOW_TOY, root="class:0", depth=2)

    out = tmp_path / "killed"
    db_path = out / "aggregate.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "featuretree.cli", "aggregate", str(folder), "--model", SLOW_TOY, "--out", str(out)]
    command += ["--class", "0", "--depth", "2", "--k", "3", "--shard-size", "2", "--quiet"]
    committed = kill_after(command, env, db_path, 6)
    assert 6 <= committed < 25 and committed % 2 == 0  # whole shards only
    assert not (out / "graph.json").exists()  # written at the end, never half

    rerun = subprocess.run(command[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{25 - committed} trees built" in rerun.stdout and f"{committed} already in the database, 1 skipped" in rerun.stdout
    with AggregateDB(db_path) as a, AggregateDB(tmp_path / "reference" / "aggregate.db") as b:
        assert a.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert rows_of(a) == rows_of(b)
    reference = graph_of(tmp_path / "reference")
    assert graph_of(out) == {**reference, "model": {**reference["model"], "spec": SLOW_TOY}}


def test_bad_input_gets_one_line_and_no_output(tmp_path, capsys):
    folder = tmp_path / "imgs"
    make_noise(folder, 3)
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["aggregate", str(folder), "--model", VARIED, "--out", str(out), "--depth", "2", "--quiet"]) == 0
    with AggregateDB(out / "aggregate.db") as db:
        assert db.skipped() == [("truncated.jpg", db.skipped()[0][1])] and db.counts() == {"ok": 3, "skipped": 1}
    capsys.readouterr()

    cases = [
        (["--depth", "3"], "was built with other settings (depth: 2, not 3)"),  # other settings into the same --out
        (["--depth", "2", "--ray-address", "auto"], "--ray-address needs --engine ray"),
        (["--depth", "2", "--workers", "2"], "--workers (Ray actors) needs --engine ray"),
        (["--depth", "2", "--engine", "ray", "--ray-address", "127.0.0.1:1"], "nothing answers at --ray-address 127.0.0.1:1"),
        (["--depth", "2", "--class", "7"], "class 7"),  # out of range: refused before any image is read
        (["--depth", "9"], "deeper than the chain"),
    ]
    for extra, message in cases:
        target = out if extra[:2] == ["--depth", "3"] else tmp_path / f"new{len(extra)}"
        code = main(["aggregate", str(folder), "--model", VARIED, "--out", str(target), "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        if target != out:
            assert not target.exists()
    missing = main(["aggregate", str(tmp_path / "nope"), "--model", VARIED, "--out", str(tmp_path / "x"), "--quiet"])
    assert missing == 2 and "not found" in capsys.readouterr().err


def failing_reads(monkeypatch, name: str) -> None:
    """Reading ``name`` fails as on a file without read permission (root reads every file, so no chmod)."""
    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        if path.name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def test_an_unreadable_file_is_listed_and_tried_again_next_run(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    make_noise(folder, 4)
    with monkeypatch.context() as patch:
        failing_reads(patch, "img001.png")
        first = run(folder, tmp_path / "out", depth=2)
    assert first.aggregated == 3 and first.skipped == [("img001.png", "unreadable (Permission denied)")]
    with AggregateDB(tmp_path / "out" / "aggregate.db") as db:
        assert db.image("img001.png") is None  # not remembered as skipped
    second = run(folder, tmp_path / "out", depth=2)
    assert second.aggregated == 1 and second.already == 3 and not second.skipped
    run(folder, tmp_path / "fresh", depth=2)
    with AggregateDB(tmp_path / "out" / "aggregate.db") as a, AggregateDB(tmp_path / "fresh" / "aggregate.db") as b:
        assert rows_of(a) == rows_of(b)


def test_a_graph_read_while_a_run_commits_sees_one_snapshot(tmp_path, monkeypatch):
    from featuretree.aggregate import graph as graph_module

    make_noise(tmp_path / "imgs", 3)
    out = tmp_path / "out"
    run(tmp_path / "imgs", out, root="class:1", depth=2)
    before = graph_of(out)

    def commit_a_copy() -> None:  # what a run does from another process: one more image with the same tree
        with contextlib.closing(sqlite3.connect(out / "aggregate.db", isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")
            new = conn.execute(
                "INSERT INTO images (path, sha256, size, mtime_ns, status, error, root, root_label, top_class, top_probability, "
                "completeness) SELECT 'copy.png', sha256, size, mtime_ns, status, error, root, root_label, top_class, "
                "top_probability, completeness FROM images WHERE id = 1"
            ).lastrowid
            conn.execute(
                f"INSERT INTO image_units SELECT {new}, unit, layer, channel, depth, share, score, path FROM image_units WHERE image_id = 1"
            )
            conn.execute(
                f"INSERT INTO image_edges SELECT {new}, source, target, target_layer, score, share FROM image_edges WHERE image_id = 1"
            )
            conn.execute("COMMIT")

    real_roots = AggregateDB.roots

    def roots_then_commit(self):
        found = real_roots(self)
        commit_a_copy()  # between the first query and the rest
        return found

    monkeypatch.setattr(AggregateDB, "roots", roots_then_commit)
    with AggregateDB(out / "aggregate.db") as db:
        during = graph_module.aggregate_graph(db)
    assert during["graphs"] == before["graphs"]  # n, counts and means all from before the commit
    monkeypatch.setattr(AggregateDB, "roots", real_roots)
    with AggregateDB(out / "aggregate.db") as db:
        after = graph_module.aggregate_graph(db)
    assert after["graphs"][0]["images"] == 4
