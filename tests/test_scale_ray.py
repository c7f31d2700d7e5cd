"""The Ray engine on a real local cluster (``ray.init(num_cpus=2)``, loopback only): shards come back in
order whatever order the actors finish in, and aggregate and index through Ray give exactly the local
engine's database and graph.json."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import ray

from featuretree.aggregate.db import AggregateDB, rows_of
from featuretree.aggregate.run import aggregate_folder
from featuretree.aggregate.worker import TreeSettings
from featuretree.core.errors import ImageInputError
from featuretree.exemplars.indexer import index_folder
from featuretree.loading import ModelSpec
from featuretree.scale.engines import EngineOptions, run_shards
from tests.scale_workers import Failing, SlowEarlyShards
from tests.test_aggregate import VARIED, failing_reads, make_noise

RAY = EngineOptions("ray", workers=2)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_shards_come_back_in_order_from_two_actors():
    shards = [[i, i] for i in range(6)]
    results = list(run_shards(SlowEarlyShards(6), shards, RAY))  # earlier shards sleep longer
    assert [index for index, _ in results] == list(range(6))
    assert [result[0] for _, result in results] == shards
    assert len({pid for _, (_, pid) in results}) == 2  # both actors worked
    with pytest.raises(ImageInputError, match="item 3 is bad"):  # the worker's own error, not a Ray wrapper
        list(run_shards(Failing(3), shards, RAY))


def aggregate(folder: Path, out: Path, engine: EngineOptions | None = None):
    spec = ModelSpec(VARIED)
    settings = TreeSettings(root=None, depth=3, k=3)
    return aggregate_folder(folder, out, spec.load(), spec, settings, engine, shard_size=2, progress=False)


def test_aggregate_through_ray_equals_local(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 7)
    (folder / "broken.png").write_bytes(b"not a png")
    aggregate(folder, tmp_path / "local")
    report = aggregate(folder, tmp_path / "ray", RAY)
    assert report.aggregated == 7 and [path for path, _ in report.skipped] == ["broken.png"]
    with AggregateDB(tmp_path / "local" / "aggregate.db") as a, AggregateDB(tmp_path / "ray" / "aggregate.db") as b:
        assert rows_of(a) == rows_of(b)
        ids = "SELECT id, path FROM images ORDER BY id"
        assert a.conn.execute(ids).fetchall() == b.conn.execute(ids).fetchall()  # committed in the same order
    assert (tmp_path / "local" / "graph.json").read_bytes() == (tmp_path / "ray" / "graph.json").read_bytes()
    assert len(json.loads((tmp_path / "ray" / "graph.json").read_text())["graphs"]) > 1


def test_ray_resumes_a_local_run_on_a_grown_folder(tmp_path):
    folder = tmp_path / "imgs"
    make_noise(folder, 4)
    aggregate(folder, tmp_path / "grown")
    make_noise(folder, 5, seed=3, start=4)
    report = aggregate(folder, tmp_path / "grown", RAY)
    assert report.already == 4 and report.aggregated == 5
    aggregate(folder, tmp_path / "fresh")
    with AggregateDB(tmp_path / "grown" / "aggregate.db") as a, AggregateDB(tmp_path / "fresh" / "aggregate.db") as b:
        assert rows_of(a) == rows_of(b)
    assert (tmp_path / "grown" / "graph.json").read_bytes() == (tmp_path / "fresh" / "graph.json").read_bytes()


def dump_tables(path: Path) -> dict[str, list]:
    with sqlite3.connect(path) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables}


def test_index_through_ray_equals_local(tmp_path):
    from tests.test_exemplars_index import make_squares

    folder = tmp_path / "imgs"
    make_squares(folder, 22)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    spec = ModelSpec("toy_squares")
    options = {"top_n": 5, "batch_size": 4, "workers": 0, "progress": False, "relevance_classes": [0]}
    with pytest.MonkeyPatch.context() as patch:
        failing_reads(patch, "sq007.png")  # an unreadable file: both engines record the same reason
        local = index_folder(folder, tmp_path / "local.db", spec.load(), "toy_squares", **options)
        remote = index_folder(folder, tmp_path / "ray.db", spec.load(), "toy_squares", engine=RAY, spec=spec, **options)
    assert ("sub1/sq007.png", "unreadable (Permission denied)") in local.skipped
    assert local.indexed == remote.indexed == 21 and local.skipped == remote.skipped
    assert dump_tables(tmp_path / "local.db") == dump_tables(tmp_path / "ray.db")  # every table, row ids included


def test_cli_engine_ray_for_aggregate_and_index(tmp_path, capsys):
    from featuretree.cli import main

    folder = tmp_path / "imgs"
    make_noise(folder, 4)
    common = ["--model", VARIED, "--quiet"]
    assert (
        main(["aggregate", str(folder), "--out", str(tmp_path / "agg"), "--depth", "2", "--engine", "ray", "--workers", "2", *common]) == 0
    )
    assert main(["aggregate", str(folder), "--out", str(tmp_path / "agg-local"), "--depth", "2", *common]) == 0
    assert (tmp_path / "agg" / "graph.json").read_bytes() == (tmp_path / "agg-local" / "graph.json").read_bytes()
    assert main(["index", str(folder), "--out", str(tmp_path / "ix.db"), "--engine", "ray", "--workers", "2", *common]) == 0
    assert main(["index", str(folder), "--out", str(tmp_path / "ix-local.db"), "--workers", "0", *common]) == 0
    assert dump_tables(tmp_path / "ix.db") == dump_tables(tmp_path / "ix-local.db")
    capsys.readouterr()
    assert main(["index", str(folder), "--out", str(tmp_path / "ix2.db"), "--engine", "ray", "--workers", "0", *common]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_a_worker_whose_model_differs_is_refused(tmp_path):
    from featuretree.core.errors import ModelError

    folder = tmp_path / "imgs"
    make_noise(folder, 2)
    explainer = ModelSpec(VARIED, layers="mid,deep,fc").load()  # not what the spec the workers get loads
    with pytest.raises(ModelError, match="differs from the starting process"):
        aggregate_folder(folder, tmp_path / "out", explainer, ModelSpec(VARIED), TreeSettings(None, depth=2), RAY, progress=False)


def test_more_workers_than_the_cluster_can_host_is_refused(tmp_path):
    from featuretree.core.errors import OptionError

    with pytest.raises(OptionError, match="--workers 5 is more than the Ray cluster can host"):
        list(run_shards(SlowEarlyShards(2, step=0.0), [[0], [1]], EngineOptions("ray", workers=5)))
