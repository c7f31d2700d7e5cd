"""An image's analysis is freed as soon as it is dropped, without waiting for the garbage collector: a
reference cycle would keep every image's activations and autograd graph alive, and memory would grow with
each image of a folder (``aggregate``, ``evaluate``) until a full collection."""

from __future__ import annotations

import gc
import weakref

from .conftest import square_picture


def test_an_analysis_is_freed_by_reference_counting_alone(toy_explainer):
    gc.collect()
    gc.disable()
    try:
        analysis = toy_explainer.analyze(square_picture())
        tree = analysis.tree(depth=2, k=2, images=True, verify=True)
        analysis.tree(depth=1, k=2, rule="integrated", images=False)
        analysis.intervene(["corners:0"])
        gone = weakref.ref(analysis)
        record = weakref.ref(analysis.record)
        del analysis, tree
        assert gone() is None and record() is None
    finally:
        gc.enable()
