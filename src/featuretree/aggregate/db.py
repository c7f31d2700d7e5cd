"""The aggregate database: one SQLite file (WAL) with every image's tree, reduced to its units and edges.

``featuretree aggregate`` writes one transaction per shard: the shard's ``images`` rows and their
``image_units`` / ``image_edges`` rows. A run killed at any moment (kill -9 included) resumes from
the last committed shard with nothing lost or counted twice, and a grown folder only adds its new
files. The class graph (``aggregate.graph``) is computed from these rows, never kept in memory
image by image. The schema is documented in docs/aggregate.md.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import FeatureTreeError
from ..core.folders import KnownFile
from ..core.sqlite_store import SQLiteStore

SCHEMA_VERSION = 1
DB_NAME = "aggregate.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
    error TEXT,
    root TEXT,
    root_label TEXT,
    top_class INTEGER,
    top_probability REAL,
    completeness REAL
);
CREATE TABLE IF NOT EXISTS image_units (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    unit TEXT NOT NULL,
    layer TEXT NOT NULL,
    channel INTEGER NOT NULL,
    depth INTEGER NOT NULL,
    share REAL NOT NULL,
    score REAL,
    path TEXT NOT NULL,
    PRIMARY KEY (image_id, unit)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS image_edges (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    target_layer TEXT NOT NULL,
    score REAL NOT NULL,
    share REAL NOT NULL,
    PRIMARY KEY (image_id, source, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS image_units_unit ON image_units(unit);
"""


class AggregateError(FeatureTreeError):
    """The aggregate database is missing, of another version, or built with other settings."""


@dataclass
class UnitRecord:
    """One distinct unit of one image's tree."""

    unit: str  # "layer:channel"
    layer: str
    channel: int
    depth: int  # its shallowest copy
    share: float  # the fraction of the root's positive evidence it carries, summed over its copies (1 at the root)
    score: float | None  # its summed first-order contribution (None at the root)
    path: str  # the node id of its copy with the largest share: where the explorer draws its map


@dataclass
class EdgeRecord:
    source: str
    target: str
    target_layer: str
    score: float  # summed over the tree edges it merges
    share: float  # of the evidence below the source unit (tree.graph)


@dataclass
class ImageRecord:
    """What a worker returns for one file: its tree reduced to units and edges, or why it was skipped."""

    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    error: str | None = None
    root: str | None = None
    root_label: str | None = None
    top_class: int | None = None
    top_probability: float | None = None
    completeness: float | None = None
    units: list[UnitRecord] = field(default_factory=list)
    edges: list[EdgeRecord] = field(default_factory=list)


class AggregateDB(SQLiteStore):
    """A connection to one aggregate database. Use as a context manager."""

    error = AggregateError
    kind = "aggregate database"
    build_hint = "build it with `featuretree aggregate IMAGES_DIR --out DIR`"

    def _init_schema(self, create: bool) -> None:
        tables = self.tables()
        if "schema_version" in tables and "image_units" in tables:
            (version,) = self.conn.execute("SELECT version FROM schema_version").fetchone() or (None,)
            if version != SCHEMA_VERSION:
                raise AggregateError(
                    f"{self.path} has aggregate schema version {version}, this featuretree reads version {SCHEMA_VERSION}",
                    "aggregate into a new --out",
                )
            return
        if tables:
            raise AggregateError(f"{self.path} is an SQLite file but not an aggregate database", "choose another --out")
        self.create_schema(create, _SCHEMA, SCHEMA_VERSION)

    # ----- settings -----------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, conn: sqlite3.Connection, values: dict[str, Any]) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    # ----- images ---------------------------------------------------------------
    def known_files(self) -> dict[str, KnownFile]:
        rows = self.conn.execute("SELECT path, size, mtime_ns, sha256, status FROM images")
        return {path: KnownFile(size, mtime, status, sha) for path, size, mtime, sha, status in rows}

    def put(self, conn: sqlite3.Connection, record: ImageRecord) -> None:
        """Store one image's record, replacing an earlier one of the same path (a changed file)."""
        conn.execute("DELETE FROM images WHERE path = ?", (record.path,))  # cascades to its units and edges
        cur = conn.execute(
            "INSERT INTO images (path, sha256, size, mtime_ns, status, error, root, root_label, top_class, top_probability, completeness) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                record.path,
                record.sha256,
                record.size,
                record.mtime_ns,
                "ok" if record.error is None else "skipped",
                record.error,
                record.root,
                record.root_label,
                record.top_class,
                record.top_probability,
                record.completeness,
            ),
        )
        image_id = cur.lastrowid
        conn.executemany(
            "INSERT INTO image_units (image_id, unit, layer, channel, depth, share, score, path) VALUES (?,?,?,?,?,?,?,?)",
            [(image_id, u.unit, u.layer, u.channel, u.depth, u.share, u.score, u.path) for u in record.units],
        )
        conn.executemany(
            "INSERT INTO image_edges (image_id, source, target, target_layer, score, share) VALUES (?,?,?,?,?,?)",
            [(image_id, e.source, e.target, e.target_layer, e.score, e.share) for e in record.edges],
        )

    def counts(self) -> dict[str, int]:
        return {status: n for status, n in self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status")}

    def roots(self) -> list[tuple[str, str | None, int]]:
        """(root unit, its label, images) for every root with images, most images first."""
        rows = self.conn.execute(
            "SELECT root, MAX(root_label), COUNT(*) FROM images WHERE status = 'ok' GROUP BY root ORDER BY COUNT(*) DESC, root"
        )
        return [(root, label, n) for root, label, n in rows]

    def unit_images(self, root: str, unit: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The images whose tree (rooted at ``root``) shows ``unit``, largest share first (ties by path)."""
        rows = self.conn.execute(
            "SELECT i.path, u.share, u.score, u.path, u.depth FROM image_units u JOIN images i ON i.id = u.image_id "
            "WHERE i.root = ? AND u.unit = ? ORDER BY u.share DESC, i.path" + (" LIMIT ?" if limit else ""),
            (root, unit, limit) if limit else (root, unit),
        )
        return [{"image": path, "share": share, "score": score, "node": node, "depth": depth} for path, share, score, node, depth in rows]

    def image(self, path: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT path, status, error, root, root_label, top_class, top_probability, completeness FROM images WHERE path = ?", (path,)
        ).fetchone()
        if row is None:
            return None
        keys = ("path", "status", "error", "root", "root_label", "top_class", "top_probability", "completeness")
        return dict(zip(keys, row))

    def skipped(self) -> list[tuple[str, str]]:
        return list(self.conn.execute("SELECT path, error FROM images WHERE status = 'skipped' ORDER BY path"))

    # ----- reads for the class graph's pages (graph.html, the explorer) ---------------------
    def unit_images_page(self, root: str, unit: str, offset: int = 0, limit: int = 20) -> list[dict[str, Any]]:
        """One page of ``unit_images``: the same rows in the same order (largest share first, ties by path)."""
        rows = self.conn.execute(
            "SELECT i.path, u.share, u.score, u.path, u.depth FROM image_units u JOIN images i ON i.id = u.image_id "
            "WHERE i.root = ? AND u.unit = ? ORDER BY u.share DESC, i.path LIMIT ? OFFSET ?",
            (root, unit, int(limit), int(offset)),
        )
        return [{"image": path, "share": share, "score": score, "node": node, "depth": depth} for path, share, score, node, depth in rows]

    def top_images(self, per_unit: int) -> dict[str, dict[str, list[tuple[str, float]]]]:
        """For every root and unit, its first ``per_unit`` images in ``unit_images``' order, as (image, share),
        in one query: ``{root: {unit: [(image, share), ...]}}``."""
        rows = self.conn.execute(
            "SELECT root, unit, path, share FROM (SELECT i.root AS root, u.unit AS unit, i.path AS path, u.share AS share, "
            "ROW_NUMBER() OVER (PARTITION BY i.root, u.unit ORDER BY u.share DESC, i.path) AS rank "
            "FROM image_units u JOIN images i ON i.id = u.image_id) WHERE rank <= ? ORDER BY root, unit, rank",
            (int(per_unit),),
        )
        out: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for root, unit, path, share in rows:
            out.setdefault(root, {}).setdefault(unit, []).append((path, share))
        return out

    def unit_image_count(self, root: str, unit: str) -> int:
        """In how many images rooted at ``root`` the tree shows ``unit``."""
        sql = "SELECT COUNT(*) FROM image_units u JOIN images i ON i.id = u.image_id WHERE i.root = ? AND u.unit = ?"
        return int(self.conn.execute(sql, (root, unit)).fetchone()[0])

    def image_unit(self, path: str, root: str, unit: str) -> dict[str, Any] | None:
        """``unit``'s row in the tree of image ``path`` (rooted at ``root``), or None where that tree does not show it."""
        row = self.conn.execute(
            "SELECT u.share, u.score, u.path, u.depth FROM image_units u JOIN images i ON i.id = u.image_id "
            "WHERE i.path = ? AND i.root = ? AND u.unit = ?",
            (path, root, unit),
        ).fetchone()
        return None if row is None else dict(zip(("share", "score", "node", "depth"), row))

    def image_file(self, path: str) -> dict[str, Any] | None:
        """What the database knows of one file: status, content hash and root; None if it holds no such path."""
        row = self.conn.execute("SELECT status, sha256, root FROM images WHERE path = ?", (path,)).fetchone()
        return None if row is None else dict(zip(("status", "sha256", "root"), row))


def rows_of(db: AggregateDB) -> dict[str, list[tuple]]:
    """Every stored fact, keyed by image path rather than row id: what two databases are compared by."""
    images = db.conn.execute(
        "SELECT path, sha256, size, mtime_ns, status, error, root, root_label, top_class, top_probability, completeness "
        "FROM images ORDER BY path"
    )
    units = db.conn.execute(
        "SELECT i.path, u.unit, u.layer, u.channel, u.depth, u.share, u.score, u.path "
        "FROM image_units u JOIN images i ON i.id = u.image_id ORDER BY i.path, u.unit"
    )
    edges = db.conn.execute(
        "SELECT i.path, e.source, e.target, e.target_layer, e.score, e.share "
        "FROM image_edges e JOIN images i ON i.id = e.image_id ORDER BY i.path, e.source, e.target"
    )
    return {"images": list(images), "image_units": list(units), "image_edges": list(edges)}
