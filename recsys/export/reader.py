"""`load_bundle(dir)`: check a bundle against its manifest and load what serving needs.

Checks, in order, before anything is loaded: `manifest.json` is there and is JSON; its
`format_version` is one this code reads; every file it lists exists with the listed sha256;
no file is there that it does not list; it holds the entries loading reads (format, models,
index type). A failing bundle raises `BundleError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch import Tensor

from recsys.errors import RecsysError
from recsys.export import layout
from recsys.export.formats import FORMATS, InferenceModule, load_module
from recsys.export.index import read_index
from recsys.export.prior import Prior
from recsys.export.tensors import features_of, to_tensors
from recsys.features.feature_spec import FeatureSpec
from recsys.features.pipeline import FeaturePipeline


class BundleError(RecsysError):
    """A bundle that fails its checks; the message names the file at fault."""


@dataclass
class FeatureSnapshot:
    """One source run's features: spec, fitted pipeline, encoded user and item tables."""

    spec: FeatureSpec
    pipeline: FeaturePipeline
    users: pa.Table
    items: pa.Table

    def rows(self, entity: str, raw_ids: list[str] | pa.Array) -> tuple[pa.Table, np.ndarray]:
        """The `entity` (user | item) table's rows for `raw_ids`, in that order, and a mask of
        the ids found; a row not found holds zeros (index 0 = missing, 0.0)."""
        key = self.spec.user_id if entity == "user" else self.spec.item_id
        table = self.users if entity == "user" else self.items
        if key is None or f"{key}_raw" not in table.column_names:
            raise BundleError(f"the {entity} table has no raw id column to look {entity}s up by")
        raw = pa.array(raw_ids, pa.string()) if not isinstance(raw_ids, pa.Array) else raw_ids
        pos = pc.index_in(raw.cast(pa.string()), value_set=table[f"{key}_raw"].combine_chunks())
        found = pos.is_valid().to_numpy(zero_copy_only=False)
        take = pos.fill_null(0).to_numpy(zero_copy_only=False)
        rows = table.take(take) if table.num_rows else table
        if not found.all():
            rows = _zero_missing(rows, found)
        return rows, found


def _zero_missing(rows: pa.Table, found: np.ndarray) -> pa.Table:
    mask = pa.array(~found)
    columns = []
    for column in rows.columns:
        column = column.combine_chunks()
        if pa.types.is_list(column.type):
            width = max((len(v) for v in column.to_pylist()), default=1)
            zero = pa.array([[0] * width] * len(column), column.type)
        else:
            zero = pa.array(np.zeros(len(column)), pa.float64()).cast(column.type, safe=False)
        columns.append(pc.if_else(mask, zero, column))
    return pa.Table.from_arrays(columns, names=rows.column_names)


@dataclass
class Bundle:
    """Everything in a bundle, loaded (what serving and offline evaluation use)."""

    path: Path
    manifest: dict[str, Any]
    ranker: InferenceModule
    user_tower: InferenceModule
    index: faiss.Index
    item_ids: pa.Table
    popularity: pa.Table
    ranker_features: FeatureSnapshot
    retrieval_features: FeatureSnapshot

    @property
    def ranker_inputs(self) -> list[str]:
        return list(self.manifest["models"]["ranker"]["inputs"])

    def user_vectors(self, users: pa.Table) -> np.ndarray:
        """B x D vectors of retrieval user-table rows, from the exported user tower."""
        spec = self.retrieval_features.spec
        batch = to_tensors(users, features_of(spec, ("user_tower",)), "users")
        return self.user_tower(batch).detach().float().numpy()

    @property
    def prior(self) -> Prior | None:
        return Prior.of_manifest(self.manifest)

    @property
    def vector_dim(self) -> int:
        """Dimensions of a user vector (the index's, less the prior's component if any)."""
        return int(self.index.d) - (1 if self.prior is not None else 0)

    def query_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """User vectors (B x D) as the index's queries (with the prior's component)."""
        prior = self.prior
        return prior.queries(vectors) if prior is not None else np.ascontiguousarray(vectors)

    def ranker_batch(self, rows: pa.Table) -> dict[str, Tensor]:
        """The ranker's input tensors from a table holding its input columns."""
        spec = self.ranker_features.spec
        return to_tensors(rows, [spec[name] for name in self.ranker_inputs], "ranker rows")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / layout.MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (not a bundle, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    return manifest


def verify_bundle(directory: str | Path) -> dict[str, Any]:
    """The manifest, after checking the format version and every file's sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle {directory} is not a directory")
    manifest = read_manifest(directory)
    version = manifest.get("format_version")
    if version != layout.FORMAT_VERSION:
        raise BundleError(
            f"{directory / layout.MANIFEST}: bundle format version {version!r} is not supported "
            f"(this code reads version {layout.FORMAT_VERSION}); re-export with this code"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{directory / layout.MANIFEST} lists no files")
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        if layout.sha256(path) != entry.get("sha256"):
            raise BundleError(f"{path}: sha256 does not match the manifest (file changed)")
    extra = sorted(set(layout.bundle_files(directory)) - set(files))
    if extra:
        raise BundleError(f"{directory / extra[0]}: not listed in the manifest")
    return manifest


def check_manifest(manifest: dict[str, Any], directory: Path) -> None:
    """The manifest holds the entries loading reads: format, models (ranker and user tower,
    each a file and its inputs) and index type; the file hashes do not cover the manifest."""
    where = directory / layout.MANIFEST

    def entry(node: Any, key: str, kind: type, name: str) -> Any:
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, kind):
            problem = "lacks" if value is None else f"has a {type(value).__name__} for"
            raise BundleError(f"{where} {problem} {name!r}; re-export the bundle")
        return value

    fmt = entry(manifest, "format", str, "format")
    if fmt not in FORMATS:
        raise BundleError(f"{where}: format {fmt!r} is not one of {FORMATS}")
    models = entry(manifest, "models", dict, "models")
    for role in ("ranker", "user_tower"):
        model = entry(models, role, dict, f"models.{role}")
        entry(model, "file", str, f"models.{role}.file")
        entry(model, "inputs", list, f"models.{role}.inputs")
    entry(entry(manifest, "index", dict, "index"), "type", str, "index.type")


def _snapshot(directory: Path) -> FeatureSnapshot:
    def table(name: str) -> pa.Table:
        path = directory / name
        return pq.read_table(path) if path.is_file() else pa.table({})

    return FeatureSnapshot(
        spec=FeatureSpec.load(directory / layout.SPEC),
        pipeline=FeaturePipeline.load(directory / layout.PIPELINE),
        users=table(layout.USERS),
        items=table(layout.ITEMS),
    )


def load_bundle(directory: str | Path, verify: bool = True) -> Bundle:
    """Check (unless `verify=False`) and load a bundle written by `recsys.export`."""
    directory = Path(directory)
    manifest = verify_bundle(directory) if verify else read_manifest(directory)
    check_manifest(manifest, directory)
    fmt = manifest["format"]
    models = manifest["models"]
    try:
        return Bundle(
            path=directory,
            manifest=manifest,
            ranker=load_module(directory / models["ranker"]["file"], fmt),
            user_tower=load_module(directory / models["user_tower"]["file"], fmt),
            index=read_index(directory / layout.INDEX),
            item_ids=pq.read_table(directory / layout.ITEM_IDS),
            popularity=pq.read_table(directory / layout.POPULARITY),
            ranker_features=_snapshot(directory / "ranker"),
            retrieval_features=_snapshot(directory / "retrieval"),
        )
    except RecsysError:
        raise
    except Exception as e:
        raise BundleError(f"bundle {directory}: cannot load: {e}") from e
