"""The exemplar database: one SQLite file (WAL) holding the index, the streaming top-N state and the crops.

The schema is documented in docs/exemplar-db.md; ``SCHEMA_VERSION`` changes whenever it does.

Two levels of state:
- ``topn`` holds, per layer, the running top-N of every unit as a few numpy arrays (one row
  per layer). The indexer rewrites it in the same transaction as the ``images`` rows of each
  batch, so a killed run resumes from the last committed batch with nothing lost or counted twice.
- ``exemplars`` is the readable, relational form of that state (one row per unit per kept image,
  with its rank, location, receptive-field box and crop references). It is rebuilt from ``topn``
  by ``materialize`` at the end of every run, keeping the boxes and crops of entries that stay.

Version 2 changed what a box is: the engine's receptive field of the entry's position (on the
entry's image), no longer a per-layer estimate shifted by a stride. Version-1 files are updated in
place when opened; their old boxes are marked as estimates and replaced by the next finishing pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import FeatureTreeError, LayerError, UnitError, did_you_mean
from ..core.folders import KnownFile
from ..core.sqlite_store import SQLiteStore

SCHEMA_VERSION = 3
ENGINE_BOXES = "engine"  # layers.rf "boxes": the layer's stored boxes are the engine's receptive fields
ESTIMATED_BOXES = "estimate"  # ... or a version-1 estimate, replaced by the next finishing pass

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in model-input pixels
BoxKey = tuple[str, int, int, int]  # (layer, image_id, row, col): what a receptive-field box depends on
BoxFunction = Callable[[dict[str, set[tuple[int, int, int]]]], dict[BoxKey, Box]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    name TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    rf TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    root_id INTEGER NOT NULL REFERENCES roots(id),
    path TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'skipped')),
    error TEXT,
    width INTEGER,
    height INTEGER,
    top_class INTEGER,
    top_probability REAL,
    UNIQUE (root_id, path)
);
CREATE TABLE IF NOT EXISTS topn (
    ranking TEXT NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(name),
    state BLOB NOT NULL,
    PRIMARY KEY (ranking, layer)
);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, png BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exemplars (
    ranking TEXT NOT NULL,
    layer TEXT NOT NULL REFERENCES layers(name),
    unit INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    value REAL NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    box_left INTEGER NOT NULL,
    box_top INTEGER NOT NULL,
    box_right INTEGER NOT NULL,
    box_bottom INTEGER NOT NULL,
    crop TEXT REFERENCES blobs(sha256),
    recon TEXT REFERENCES blobs(sha256),
    PRIMARY KEY (ranking, layer, unit, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS exemplars_rank ON exemplars(ranking, layer, unit, rank);
CREATE INDEX IF NOT EXISTS exemplars_image ON exemplars(image_id);
"""

EMPTY_ID = -1
ACTIVATION = "activation"  # the default ranking; "class:K" ranks by relevance to class K
_TIE_EMPTY = np.iinfo(np.int64).max


class DatabaseError(FeatureTreeError):
    """The exemplar database is missing, of another version, or built for another model."""


def tie_key(rel_path: str) -> int:
    """Order-independent tie-break between equal activations: a 63-bit hash of the relative path."""
    return int.from_bytes(hashlib.sha1(rel_path.encode("utf-8")).digest()[:8], "big") >> 1


@dataclass
class TopN:
    """The running top-N of every unit of one layer; row u is unit u, best first.

    Empty slots have ``ids == -1`` and ``values == -inf``. Order: value descending, then tie key.
    """

    values: np.ndarray  # float32 [C, N]
    ids: np.ndarray  # int64 [C, N] image ids
    ties: np.ndarray  # int64 [C, N]
    rows: np.ndarray  # int32 [C, N]
    cols: np.ndarray  # int32 [C, N]

    @classmethod
    def empty(cls, channels: int, n: int) -> TopN:
        return cls(
            np.full((channels, n), -np.inf, np.float32),
            np.full((channels, n), EMPTY_ID, np.int64),
            np.full((channels, n), _TIE_EMPTY, np.int64),
            np.zeros((channels, n), np.int32),
            np.zeros((channels, n), np.int32),
        )

    def merge(self, values: np.ndarray, ids: np.ndarray, ties: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
        """Merge one batch: ``values/rows/cols`` are [B, C], ``ids/ties`` [B]. Returns whether anything changed."""
        channels, n = self.values.shape
        batch = values.shape[0]
        if batch == 0:
            return False
        values = np.where(np.isfinite(values), values, -np.inf).astype(np.float32).T  # [C, B]
        all_values = np.concatenate([self.values, values], 1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, (channels, batch))], 1)
        all_ties = np.concatenate([self.ties, np.broadcast_to(ties, (channels, batch))], 1)
        all_rows = np.concatenate([self.rows, rows.T.astype(np.int32)], 1)
        all_cols = np.concatenate([self.cols, cols.T.astype(np.int32)], 1)
        order = np.lexsort((all_ties, -all_values.astype(np.float64)), axis=1)[:, :n]
        new_values = np.take_along_axis(all_values, order, 1)
        new_ids = np.take_along_axis(all_ids, order, 1)
        empty = ~np.isfinite(new_values)
        new_ids = np.where(empty, EMPTY_ID, new_ids)
        changed = not np.array_equal(new_ids, self.ids)
        self.values = new_values
        self.ids = new_ids
        self.ties = np.where(empty, _TIE_EMPTY, np.take_along_axis(all_ties, order, 1))
        self.rows = np.where(empty, 0, np.take_along_axis(all_rows, order, 1))
        self.cols = np.where(empty, 0, np.take_along_axis(all_cols, order, 1))
        return changed

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, values=self.values, ids=self.ids, ties=self.ties, rows=self.rows, cols=self.cols)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TopN:
        with np.load(io.BytesIO(data)) as z:
            return cls(z["values"], z["ids"], z["ties"], z["rows"], z["cols"])


@dataclass(frozen=True)
class LayerRecord:
    name: str
    position: int
    channels: int
    height: int
    width: int
    rf: dict  # {"kind": "spatial" | "vector", "boxes": ENGINE_BOXES | ESTIMATED_BOXES}: how its entries' boxes were made


@dataclass(frozen=True)
class Exemplar:
    ranking: str
    layer: str
    unit: int
    rank: int
    image_id: int
    path: str  # relative to its root
    root: str
    value: float
    row: int
    col: int
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in model-input pixels
    crop: str | None  # sha256 of the PNG in blobs
    recon: str | None

    @property
    def file(self) -> Path:
        return Path(self.root) / self.path


class ExemplarDB(SQLiteStore):
    """A connection to one exemplar database file. Use as a context manager."""

    error = DatabaseError
    kind = "exemplar database"
    build_hint = "build it with `featuretree index IMAGES_DIR --out DB`"
    unusable_hint = "point at a file made by `featuretree index`"

    def _init_schema(self, create: bool) -> None:
        tables = self.tables()
        if "schema_version" in tables:
            row = self.conn.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else None
            if version == 1:
                _upgrade_from_1(self)
                version = 2
            if version == 2:
                _upgrade_from_2(self)
                return
            if version != SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.path} has exemplar schema version {version}, this featuretree reads version {SCHEMA_VERSION}",
                    "rebuild it with `featuretree index` into a new --out",
                )
            return
        if tables:
            raise DatabaseError(f"{self.path} is an SQLite file but not an exemplar database", "choose another --out")
        self.create_schema(create, _SCHEMA, SCHEMA_VERSION)

    # ----- meta and layers -----------------------------------------------
    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def set_meta(self, conn: sqlite3.Connection, values: dict) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    def rankings(self) -> list[str]:
        return list(self.meta().get("rankings", [ACTIVATION]))

    def check_ranking(self, ranking: str) -> None:
        rankings = self.rankings()
        if ranking not in rankings:
            raise UnitError(
                f"the exemplar database has no ranking {ranking!r} (it has {', '.join(rankings)})",
                "index with --relevance-class K to rank by relevance to class K",
            )

    def layers(self) -> list[LayerRecord]:
        rows = self.conn.execute("SELECT name, position, channels, height, width, rf FROM layers ORDER BY position")
        return [LayerRecord(n, p, c, h, w, json.loads(rf)) for n, p, c, h, w, rf in rows]

    def layer(self, name: str) -> LayerRecord:
        layers = {rec.name: rec for rec in self.layers()}
        if name not in layers:
            hint = did_you_mean(name, list(layers))
            raise LayerError(f"the exemplar database has no layer {name!r}", hint or f"its layers are {', '.join(layers)}")
        return layers[name]

    def check_unit(self, layer: str, unit: int) -> LayerRecord:
        rec = self.layer(layer)
        if not 0 <= unit < rec.channels:
            raise UnitError(f"unit {unit} is out of range for layer {layer!r}", f"it has units 0..{rec.channels - 1}")
        return rec

    # ----- images --------------------------------------------------------
    def root_id(self, conn: sqlite3.Connection, root: str) -> int:
        conn.execute("INSERT OR IGNORE INTO roots (path) VALUES (?)", (root,))
        return conn.execute("SELECT id FROM roots WHERE path = ?", (root,)).fetchone()[0]

    def known_files(self, root: str) -> dict[str, KnownFile]:
        """rel path -> its size, mtime_ns, status and sha256, for files already recorded under ``root``."""
        rows = self.conn.execute(
            "SELECT i.path, i.size, i.mtime_ns, i.status, i.sha256 FROM images i JOIN roots r ON r.id = i.root_id WHERE r.path = ?",
            (root,),
        )
        return {p: KnownFile(s, m, st, sha) for p, s, m, st, sha in rows}

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status")
        return {status: n for status, n in rows}

    # ----- top-N state ---------------------------------------------------
    def load_topn(self, layers: Sequence[LayerRecord], n: int, rankings: Sequence[str]) -> dict[tuple[str, str], TopN]:
        stored = {(r, layer): state for r, layer, state in self.conn.execute("SELECT ranking, layer, state FROM topn")}
        return {
            (r, rec.name): TopN.from_bytes(stored[r, rec.name]) if (r, rec.name) in stored else TopN.empty(rec.channels, n)
            for r in rankings
            for rec in layers
        }

    # ----- exemplars -----------------------------------------------------
    _EXEMPLAR_SQL = (
        "SELECT e.ranking, e.layer, e.unit, e.rank, e.image_id, i.path, r.path, e.value, e.row, e.col, "
        "e.box_left, e.box_top, e.box_right, e.box_bottom, e.crop, e.recon "
        "FROM exemplars e JOIN images i ON i.id = e.image_id JOIN roots r ON r.id = i.root_id "
    )

    @staticmethod
    def _exemplar(row) -> Exemplar:
        ranking, layer, unit, rank, image_id, path, root, value, r, c, left, top, right, bottom, crop, recon = row
        return Exemplar(ranking, layer, unit, rank, image_id, path, root, value, r, c, (left, top, right, bottom), crop, recon)

    def exemplar_classes(self, layer: str, unit: int, ranking: str = ACTIVATION, top: int = 3) -> tuple[list[tuple[int, int]], int]:
        """The classes the model predicted for a unit's exemplar images, most frequent first (ties: lower
        index), as (class, count), and how many of its exemplars have a recorded prediction."""
        rows = self.conn.execute(
            "SELECT i.top_class FROM exemplars e JOIN images i ON i.id = e.image_id "
            "WHERE e.ranking = ? AND e.layer = ? AND e.unit = ? AND i.top_class IS NOT NULL",
            (ranking, layer, unit),
        ).fetchall()
        counts: dict[int, int] = {}
        for (cls,) in rows:
            counts[cls] = counts.get(cls, 0) + 1
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ordered[:top], len(rows)

    def exemplars(self, layer: str, unit: int | None = None, limit: int | None = None, ranking: str = ACTIVATION) -> list[Exemplar]:
        """Stored entries of one unit (or every unit of the layer), best first, in one ranking."""
        sql = self._EXEMPLAR_SQL + "WHERE e.ranking = ? AND e.layer = ?"
        args: list = [ranking, layer]
        if unit is not None:
            sql += " AND e.unit = ?"
            args.append(unit)
        if limit is not None:
            sql += " AND e.rank < ?"
            args.append(limit)
        sql += " ORDER BY e.unit, e.rank"
        return [self._exemplar(r) for r in self.conn.execute(sql, args)]

    def blob(self, sha: str | None) -> bytes | None:
        if sha is None:
            return None
        row = self.conn.execute("SELECT png FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def put_blob(conn: sqlite3.Connection, png: bytes) -> str:
        sha = hashlib.sha256(png).hexdigest()
        conn.execute("INSERT OR IGNORE INTO blobs (sha256, png) VALUES (?, ?)", (sha, png))
        return sha

    def set_recon(self, conn: sqlite3.Connection, ex: Exemplar, sha: str) -> None:
        conn.execute(
            "UPDATE exemplars SET recon = ? WHERE ranking = ? AND layer = ? AND unit = ? AND image_id = ?",
            (sha, ex.ranking, ex.layer, ex.unit, ex.image_id),
        )

    def materialize(self, boxes: BoxFunction) -> int:
        """Rebuild ``exemplars`` from ``topn`` in one transaction, keeping what entries that stay already have.

        ``boxes(wanted)`` gets ``{layer: {(image_id, row, col), ...}}`` for the entries without a trusted
        box and returns ``{(layer, image_id, row, col): box}``: it must be the engine's receptive field
        of that position on that image. A stored box is trusted when its layer is marked ``ENGINE_BOXES``
        and its crop was made (entries whose file was missing get their box recomputed by a later run).
        ``boxes`` runs before the write transaction, so a slow computation does not hold the write
        lock, and inside it only for entries that another writer added in between. Returns rows written.
        """
        states, trusted = _plan(self, self.conn)
        wanted = _missing(states, trusted)
        computed: dict[BoxKey, Box] = boxes(wanted) if wanted else {}
        written = 0
        with self.transaction() as conn:
            states, trusted = _plan(self, conn)
            late = _missing(states, trusted, computed)
            if late:
                computed.update(boxes(late))
            for ranking, rec, top in states:
                name = rec.name
                kept = {
                    (u, i): (r, c, box, crop, recon)
                    for u, i, r, c, *box, crop, recon in conn.execute(
                        "SELECT unit, image_id, row, col, box_left, box_top, box_right, box_bottom, crop, recon "
                        "FROM exemplars WHERE ranking = ? AND layer = ?",
                        (ranking, name),
                    )
                }
                conn.execute("DELETE FROM exemplars WHERE ranking = ? AND layer = ?", (ranking, name))
                units, ranks = np.nonzero(top.ids != EMPTY_ID)
                records = []
                for u, rank, i, value, r, c in zip(
                    units.tolist(),
                    ranks.tolist(),
                    top.ids[units, ranks].tolist(),
                    top.values[units, ranks].tolist(),
                    top.rows[units, ranks].tolist(),
                    top.cols[units, ranks].tolist(),
                ):
                    key = (name, i, r, c)
                    box = tuple(int(v) for v in (trusted[key] if key in trusted else computed[key]))
                    old = kept.get((u, i))
                    crop, recon = old[3:] if old is not None and old[:2] == (r, c) and tuple(old[2]) == box else (None, None)
                    records.append((ranking, name, u, rank, i, float(value), r, c, *box, crop, recon))
                conn.executemany("INSERT INTO exemplars VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", records)
                written += len(records)
            for rec in self.layers():
                if rec.rf.get("boxes") != ENGINE_BOXES:
                    conn.execute("UPDATE layers SET rf = ? WHERE name = ?", (json.dumps({**rec.rf, "boxes": ENGINE_BOXES}), rec.name))
        return written

    def collect_garbage(self) -> int:
        """Delete crop blobs no entry refers to any more (entries pushed out of a top-N)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM blobs WHERE sha256 NOT IN (SELECT crop FROM exemplars WHERE crop IS NOT NULL "
                "UNION SELECT recon FROM exemplars WHERE recon IS NOT NULL)"
            )
            return cur.rowcount


def _plan(db: ExemplarDB, conn: sqlite3.Connection) -> tuple[list[tuple[str, LayerRecord, TopN]], dict[BoxKey, Box]]:
    """The top-N states to materialize, and the stored boxes that can be kept."""
    layers = {rec.name: rec for rec in db.layers()}
    states = [
        (ranking, layers[name], TopN.from_bytes(state))
        for ranking, name, state in conn.execute("SELECT ranking, layer, state FROM topn ORDER BY ranking, layer").fetchall()
    ]
    engine = {name for name, rec in layers.items() if rec.rf.get("boxes") == ENGINE_BOXES}
    trusted: dict[BoxKey, Box] = {}
    for layer, image_id, r, c, *box in conn.execute(
        "SELECT layer, image_id, row, col, box_left, box_top, box_right, box_bottom FROM exemplars WHERE crop IS NOT NULL"
    ):
        if layer in engine:
            trusted[layer, image_id, r, c] = tuple(box)
    return states, trusted


def _missing(states: list[tuple[str, LayerRecord, TopN]], *known: dict[BoxKey, Box]) -> dict[str, set[tuple[int, int, int]]]:
    """{layer: {(image_id, row, col)}} of the entries whose box is in none of ``known``."""
    wanted: dict[str, set[tuple[int, int, int]]] = {}
    for _, rec, top in states:
        units, ranks = np.nonzero(top.ids != EMPTY_ID)
        for i, r, c in zip(top.ids[units, ranks].tolist(), top.rows[units, ranks].tolist(), top.cols[units, ranks].tolist()):
            if not any((rec.name, i, r, c) in k for k in known):
                wanted.setdefault(rec.name, set()).add((i, r, c))
    return wanted


def _upgrade_from_1(db: ExemplarDB) -> None:
    """Version 1 stored a stride-shifted estimate's geometry in ``layers.rf``: keep the entries, mark
    their boxes as estimates (the next finishing pass recomputes them) and call the file version 2."""
    with db.transaction() as conn:
        if conn.execute("SELECT version FROM schema_version").fetchone()[0] != 1:
            return  # another connection upgraded it first
        for name, rf in conn.execute("SELECT name, rf FROM layers").fetchall():
            kind = json.loads(rf).get("kind", "spatial")
            conn.execute("UPDATE layers SET rf = ? WHERE name = ?", (json.dumps({"kind": kind, "boxes": ESTIMATED_BOXES}), name))
        conn.execute("UPDATE schema_version SET version = 2")


def _upgrade_from_2(db: ExemplarDB) -> None:
    """Version 3 records each image's predicted class (``images.top_class``, ``top_probability``);
    images indexed before have none (NULL), and the class summaries count only those that do."""
    with db.transaction() as conn:
        if conn.execute("SELECT version FROM schema_version").fetchone()[0] != 2:
            return  # another connection upgraded it first
        columns = {row[1] for row in conn.execute("PRAGMA table_info(images)")}
        for name, kind in (("top_class", "INTEGER"), ("top_probability", "REAL")):
            if name not in columns:  # a file made as version 1 by a newer schema may have them already
                conn.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
        conn.execute("UPDATE schema_version SET version = 3")
