"""Unit exemplars: for every unit of a model's chain, the images of a collection that excite it most.

- ``featuretree index IMAGES_DIR --out DB`` builds or extends the database (indexer.py, db.py);
- ``featuretree units DB --layer L`` prints a layer's units and saves a contact sheet (sheets.py);
- ``exemplar_grid_png(db_path, layer, unit)`` renders one unit's [patches | reconstructions] grid.
"""

from __future__ import annotations

from .sheets import exemplar_grid_png

__all__ = ["exemplar_grid_png"]
