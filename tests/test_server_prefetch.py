"""Background prefetching in the explorer: the children /api/expand returns are expanded while the
user looks, so the next click is answered from the caches with the same bytes a cold server computes."""

from __future__ import annotations

import threading
import time

import pytest

from featuretree.server import ServerSettings, create_app
from featuretree.server.prefetch import Prefetcher

from .server_helpers import square_png

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

TOY = "toy_squares"


def upload(client: TestClient) -> str:
    r = client.post("/api/images", files={"file": ("square.png", square_png(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["image"]


@pytest.mark.parametrize("view", ["heatmap", "guided_original", "rf_box"])
def test_a_click_on_a_shown_child_is_served_from_the_prefetched_caches_with_the_cold_answer(view):
    warm = TestClient(create_app(ServerSettings(models=(TOY,))))
    cold = TestClient(create_app(ServerSettings(models=(TOY,), prefetch=False)))
    image = upload(warm)
    assert upload(cold) == image
    params = {"model": TOY, "image": image, "k": 3, "view": view}
    shown = warm.get("/api/expand", params={**params, "path": "classifier:0"}).json()["children"]
    workspace = warm.app.state.workspace
    assert workspace.prefetcher.wait_idle(timeout=60)
    batches = workspace.evidence_batches
    assert batches == 1 + len(shown)  # the click's own batch, then one per shown child in the background
    for child in shown:
        got = warm.get("/api/expand", params={**params, "path": child["id"]}).json()
        assert workspace.prefetcher.wait_idle(timeout=60)
        # The clicked child's pictures were ready: no batch was computed for them, and its own children
        # (the first chain layer) have none to prefetch.
        assert workspace.evidence_batches == batches
        assert got == cold.get("/api/expand", params={**params, "path": child["id"]}).json()
    assert cold.app.state.workspace.evidence_batches == len(shown)


def test_without_prefetch_every_click_computes_its_own_batch():
    client = TestClient(create_app(ServerSettings(models=(TOY,), prefetch=False)))
    image = upload(client)
    params = {"model": TOY, "image": image, "view": "heatmap"}
    shown = client.get("/api/expand", params={**params, "path": "classifier:0"}).json()["children"]
    workspace = client.app.state.workspace
    assert workspace.prefetcher is None and workspace.evidence_batches == 1
    client.get("/api/expand", params={**params, "path": shown[0]["id"]})
    assert workspace.evidence_batches == 2


def test_prefetcher_runs_the_newest_jobs_first_moves_repeated_keys_up_and_drops_the_oldest():
    prefetcher = Prefetcher(max_pending=3)
    ran: list[str] = []
    gate = threading.Event()
    try:
        prefetcher.submit([("gate", gate.wait)])  # hold the thread so the next jobs queue up
        deadline = time.monotonic() + 10
        while prefetcher._running != "gate" and time.monotonic() < deadline:
            time.sleep(0.01)
        prefetcher.submit([(name, lambda name=name: ran.append(name)) for name in ("a1", "a2")])
        prefetcher.submit([(name, lambda name=name: ran.append(name)) for name in ("b1", "a1")])
        prefetcher.submit([("c1", lambda: ran.append("c1"))])  # four waiting: the oldest (a2) is dropped
        gate.set()
        assert prefetcher.wait_idle(timeout=10)
        assert ran == ["c1", "b1", "a1"]
    finally:
        gate.set()
        prefetcher.close()


def test_prefetcher_keeps_running_after_a_failing_job_and_stops_on_close():
    prefetcher = Prefetcher()
    ran: list[int] = []
    prefetcher.submit([("bad", lambda: 1 / 0), ("good", lambda: ran.append(1))])
    assert prefetcher.wait_idle(timeout=10)
    assert ran == [1] and prefetcher.finished == 2
    thread = prefetcher._thread
    prefetcher.close()
    assert thread is not None and not thread.is_alive()
    prefetcher.submit([("late", lambda: ran.append(2))])  # ignored once closed
    time.sleep(0.05)
    assert ran == [1]


def test_the_app_stops_its_prefetch_thread_when_it_shuts_down():
    app = create_app(ServerSettings(models=(TOY,)))
    with TestClient(app) as client:  # runs the lifespan
        image = upload(client)
        client.get("/api/expand", params={"model": TOY, "image": image, "path": "classifier:0"})
        thread = app.state.workspace.prefetcher._thread
        assert thread is not None
    assert not thread.is_alive()
