"""A loaded bundle ready to serve: feature store, lookups and the synchronous stages.

`ServingModel.load(path, settings)` checks and loads the bundle (`recsys.export.load_bundle`),
opens the feature store, precomputes what every request would otherwise redo (raw id of each
index row, which index rows the ranker has features for, the popularity list) and runs warm-up
requests. The stage functions here are synchronous and thread-safe; the async services
(serving/stages.py) run them in worker threads and batch the ranker's forward passes.

Already-seen items: a bundle (format version 1) holds no per-user interaction history, so the
only items filtered out besides the request's `exclude_item_ids` are those the index returns
for padding (-1) and those the ranker has no features for. docs/serving.md says so.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from recsys.config.schema import ServeConfig
from recsys.export import layout as bundle_layout
from recsys.export.blend import Blend
from recsys.export.reader import Bundle, load_bundle
from recsys.export.tensors import features_of
from recsys.features.columns import FeatureError
from recsys.features.feature_spec import Feature
from serving.errors import RequestError
from serving.feature_store.base import FeatureStore, MemoryFeatureStore
from serving.feature_store.layout import TableLayout
from serving.feature_store.redis_store import RedisFeatureStore

log = logging.getLogger(__name__)

CONTEXT_CACHE = 1024  # distinct request contexts whose encoded features are kept
TOWER_BATCH = 4096  # users per user-tower forward when the user-vector table is built


def bundle_id(path: str | Path) -> str:
    """16 hex digits of the manifest's sha256: names a bundle version (Redis keys, metrics)."""
    return bundle_layout.sha256(Path(path) / bundle_layout.MANIFEST)[:16]


def model_version(path: str | Path) -> str:
    """`<directory name>-<12 hex digits of the manifest's sha256>` (replies, metrics)."""
    return f"{Path(path).name}-{bundle_id(path)[:12]}"


@dataclass
class Recalled:
    """Faiss's answer for one user: raw item ids (best first) and their inner products."""

    item_ids: list[str]
    scores: np.ndarray
    user_found: bool
    features_ms: float = 0.0
    recall_ms: float = 0.0


def _zeros(feature: Feature, n: int) -> Tensor:
    if feature.kind == "multi_categorical":
        return torch.zeros((n, feature.max_len or 1), dtype=torch.int64)
    if feature.is_index:
        return torch.zeros(n, dtype=torch.int64)
    return torch.zeros(n, dtype=torch.float32)


class ServingModel:
    """One bundle, loaded, with its feature store; immutable once built (swapped whole)."""

    def __init__(self, bundle: Bundle, store: FeatureStore, settings: ServeConfig) -> None:
        self.bundle = bundle
        self.store = store
        self.settings = settings
        self.path = bundle.path
        self.id = bundle_id(bundle.path)
        self.version = model_version(bundle.path)
        self.ranker_spec = bundle.ranker_features.spec
        self.retrieval_spec = bundle.retrieval_features.spec
        self.ranker_inputs = [self.ranker_spec[n] for n in bundle.ranker_inputs]
        # the final score's mix of retrieval and ranker scores, chosen at export
        self.blend = Blend.of_manifest(bundle.manifest)
        self.tower_inputs = features_of(self.retrieval_spec, ("user_tower",))
        self.dim = bundle.vector_dim
        ids = bundle.item_ids
        if bundle_layout.RAW_ID not in ids.column_names:
            raise RequestError("bundle", f"{bundle.path}: item_ids.parquet has no raw ids")
        self.row_raw = np.asarray(ids[bundle_layout.RAW_ID].to_pylist(), dtype=object)
        ranker_items = self._raw_column(bundle.ranker_features, "item")
        self.rankable = pc.is_in(ids[bundle_layout.RAW_ID], value_set=ranker_items).to_numpy(
            zero_copy_only=False
        )
        self.ranker_item_set = frozenset(ranker_items.to_pylist())
        popular = bundle.popularity
        if bundle_layout.RAW_ID in popular.column_names:
            keep = pc.invert(pc.is_null(popular[bundle_layout.RAW_ID]))
            popular = popular.filter(keep)
            self.popular_ids = [str(v) for v in popular[bundle_layout.RAW_ID].to_pylist()]
            self.popular_scores = popular[bundle_layout.INTERACTIONS].to_numpy().astype(np.float32)
        else:
            self.popular_ids, self.popular_scores = [], np.zeros(0, np.float32)
        self.pipeline = bundle.ranker_features.pipeline
        self.context_features = [f for f in self.ranker_inputs if f.entity == "context"]
        self.context_columns = dict(self.pipeline.raw_columns)
        item_key = self.ranker_spec.item_id
        self.item_raw_column = self.ranker_spec[item_key].source[0] if item_key else None
        user_key = self.ranker_spec.user_id
        self.user_raw_column = self.ranker_spec[user_key].source[0] if user_key else None
        # context features that read an item column need one transformed row per candidate
        item_sources = {
            s
            for f in self.ranker_spec.features
            if f.entity == "item"
            for s in f.source
            if s != self.user_raw_column
        }
        self.context_per_item = any(set(f.source) & item_sources for f in self.context_features)
        # ... and those that read the user id differ per user (part of the cache key)
        self.context_per_user = any(self.user_raw_column in f.source for f in self.context_features)
        self._context_cache: OrderedDict[tuple[tuple[str, str], ...], dict[str, Tensor]] = (
            OrderedDict()
        )
        self._cache_lock = Lock()
        self.user_vectors, self.user_vector_rows = self._user_vector_table()

    def _user_vector_table(self) -> tuple[np.ndarray | None, Mapping[str, int]]:
        """Every known user's tower output, computed once at load (`user_vector_table_mb`).

        The user tower is a function of the user's retrieval features, which the in-process
        store holds unchanged for the bundle's life, so a table lookup returns what the tower
        would; per request it replaces a feature lookup and a small forward pass whose weights
        the ranker's pass has just pushed out of the caches (about 0.7 ms here). Redis and
        remote stores keep the per-request tower: their rows are not enumerated at load.
        """
        limit = self.settings.user_vector_table_mb
        if limit <= 0 or not isinstance(self.store, MemoryFeatureStore):
            return None, {}
        size_mb = self.users * self.dim * 4 / 2**20
        if size_mb > limit:
            log.info(
                "user vectors: %d users x %d dims = %.1f MiB > user_vector_table_mb=%g; the "
                "user tower runs per request",
                self.users,
                self.dim,
                size_mb,
                limit,
            )
            return None, {}
        t0 = time.perf_counter()
        # row i of the table is row i of the store's records: the store's id -> row mapping
        # serves both
        records, rows = self.store.table("retrieval", "user")
        layout = self.store.layout("retrieval", "user")
        table = np.empty((len(records), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(records), TOWER_BATCH):
                part = records[start : start + TOWER_BATCH]
                batch = self._from_records(self.tower_inputs, layout, part, len(part))
                table[start : start + len(part)] = self.bundle.user_tower(batch).float().numpy()
        log.info(
            "user vectors: %d users' tower outputs precomputed in %.1f s (%.1f MiB)",
            len(records),
            time.perf_counter() - t0,
            table.nbytes / 2**20,
        )
        return table, rows

    @staticmethod
    def _raw_column(snap: Any, entity: str) -> pa.Array:
        key = snap.spec.user_id if entity == "user" else snap.spec.item_id
        table = snap.users if entity == "user" else snap.items
        if key is None or f"{key}_raw" not in table.column_names:
            return pa.array([], pa.string())
        return table[f"{key}_raw"].combine_chunks().cast(pa.string())

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path, settings: ServeConfig) -> ServingModel:
        """Check, load and warm a bundle; raises BundleError / FeatureStoreError on failure."""
        t0 = time.perf_counter()
        bundle = load_bundle(path)
        store = open_store(bundle, settings)
        try:
            model = cls(bundle, store, settings)
            model.warm_up(settings.warmup_requests)
        except BaseException:
            store.close()
            raise
        log.info(
            "bundle %s (%s) loaded and warmed in %.1f s: %d items, feature store %s",
            path,
            model.version,
            time.perf_counter() - t0,
            model.items,
            store.kind,
        )
        return model

    @property
    def items(self) -> int:
        return int(self.bundle.index.ntotal)

    @property
    def users(self) -> int:
        return int(self.bundle.retrieval_features.users.num_rows)

    def known_user(self) -> str | None:
        users = self._raw_column(self.bundle.retrieval_features, "user")
        return str(users[0].as_py()) if len(users) else None

    def warm_up(self, requests: int) -> None:
        """Full requests (known user, unknown user, several batch sizes): TorchScript's
        profiling executor specialises on its first calls, and the first Faiss search and
        feature lookups touch cold memory; a client should not pay for that."""
        user = self.known_user()
        for i in range(requests):
            if user is not None:
                recalled = self.recall(user, None, self.settings.candidate_count, set())
                ids = recalled.item_ids[: max(1, len(recalled.item_ids) >> i)]
                if ids:
                    batch, _ = self.rank_inputs(user, ids, {})
                    self.score(batch)
            self.fallback(10, set())

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ stages

    def user_vector(self, user_id: str) -> tuple[np.ndarray | None, float]:
        """The user tower's 1 x D vector (None for an unknown user) and the lookup time (ms)."""
        t0 = time.perf_counter()
        if self.user_vectors is not None:
            row = self.user_vector_rows.get(user_id)
            features_ms = (time.perf_counter() - t0) * 1e3
            if row is None:
                return None, features_ms
            return self.user_vectors[row : row + 1], features_ms
        records, found = self.store.lookup("retrieval", "user", [user_id])
        features_ms = (time.perf_counter() - t0) * 1e3
        if not found[0]:
            return None, features_ms
        layout = self.store.layout("retrieval", "user")
        batch = self._from_records(self.tower_inputs, layout, records, 1)
        with torch.inference_mode():
            vector = self.bundle.user_tower(batch).float().numpy()
        return np.ascontiguousarray(vector, dtype=np.float32), features_ms

    def recall(
        self, user_id: str | None, vector: np.ndarray | None, k: int, exclude: set[str]
    ) -> Recalled:
        """Top `k` rankable items by inner product for a user id or a given vector, minus
        `exclude`. Searches k + |exclude| so exclusions do not shorten the answer."""
        t0 = time.perf_counter()
        features_ms = 0.0
        if vector is None:
            assert user_id is not None
            vector, features_ms = self.user_vector(user_id)
            if vector is None:
                return Recalled([], np.zeros(0, np.float32), False, features_ms)
        elif vector.shape != (1, self.dim):
            raise RequestError(
                "user_vector", f"has {vector.size} values; user vectors have {self.dim} dimensions"
            )
        n = min(self.items, k + len(exclude))
        scores, rows = self.bundle.index.search(self.bundle.query_vectors(vector), n)
        scores, rows = scores[0], rows[0]
        keep = rows >= 0
        keep[keep] = self.rankable[rows[keep]]
        ids = self.row_raw[rows[keep]].tolist()
        scores = scores[keep]
        if exclude:
            mask = np.fromiter((i not in exclude for i in ids), bool, count=len(ids))
            ids = [i for i, m in zip(ids, mask, strict=True) if m]
            scores = scores[mask]
        recall_ms = (time.perf_counter() - t0) * 1e3 - features_ms
        return Recalled(ids[:k], scores[:k], True, features_ms, recall_ms)

    def prepare(
        self,
        user_id: str,
        k: int,
        exclude: set[str],
        context: Mapping[str, str],
        score_inline: Callable[[ServingModel, dict[str, Tensor]], np.ndarray | None],
    ) -> tuple[Recalled, dict[str, Tensor] | None, float, np.ndarray | None, float]:
        """Recall, the ranker's inputs and, when `score_inline` can run it at once, the
        forward pass, in one worker-thread job (both stages in-process):
        (recalled, ranker batch or None, features ms, scores or None, forward ms)."""
        recalled = self.recall(user_id, None, k, exclude)
        if not recalled.user_found or not recalled.item_ids:
            return recalled, None, 0.0, None, 0.0
        batch, features_ms = self.rank_inputs(user_id, recalled.item_ids, context)
        t0 = time.perf_counter()
        scores = score_inline(self, batch)
        return recalled, batch, features_ms, scores, (time.perf_counter() - t0) * 1e3

    def fallback(self, k: int, exclude: set[str]) -> tuple[list[str], np.ndarray]:
        """The popularity list (cold start): top `k` items not excluded."""
        ids, scores = [], []
        for item, score in zip(self.popular_ids, self.popular_scores, strict=True):
            if item not in exclude:
                ids.append(item)
                scores.append(score)
                if len(ids) == k:
                    break
        return ids, np.asarray(scores, np.float32)

    def check_items(self, item_ids: Sequence[str]) -> None:
        unknown = [i for i in item_ids if i not in self.ranker_item_set]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise RequestError("item_ids", f"unknown to the bundle: {shown}{more}")

    def rank_inputs(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str]
    ) -> tuple[dict[str, Tensor], float]:
        """The ranker's input tensors for one user and its candidates (C rows), and the time
        spent on features (ms): user and item records from the store (ranker snapshot),
        context features through the FeaturePipeline's online transform."""
        t0 = time.perf_counter()
        n = len(item_ids)
        users, _ = self.store.lookup("ranker", "user", [user_id])
        items, _ = self.store.lookup("ranker", "item", item_ids)
        user_layout = self.store.layout("ranker", "user")
        item_layout = self.store.layout("ranker", "item")
        context_tensors = self._context(user_id, item_ids, context)
        batch: dict[str, Tensor] = {}
        for f in self.ranker_inputs:
            if f.entity == "item" and f.name in item_layout.names:
                batch[f.name] = item_layout.tensor(items, f.name)
            elif f.entity == "user" and f.name in user_layout.names:
                one = user_layout.tensor(users, f.name)
                batch[f.name] = one.expand(n, *one.shape[1:]).contiguous()
            elif f.name in context_tensors:
                value = context_tensors[f.name]
                batch[f.name] = value if len(value) == n else value.expand(n, *value.shape[1:])
            else:  # a feature neither table holds: missing, as offline evaluation does
                batch[f.name] = _zeros(f, n)
        return batch, (time.perf_counter() - t0) * 1e3

    def _context(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str]
    ) -> dict[str, Tensor]:
        if not self.context_features:
            if context:
                self._parse_context(context)  # still refuse unknown columns and bad values
            return {}
        if self.context_per_item:
            return self._transform_context(user_id, item_ids, context)
        key = tuple(sorted(context.items()))
        if self.context_per_user:
            key = (("", user_id), *key)
        with self._cache_lock:
            hit = self._context_cache.get(key)
            if hit is not None:
                self._context_cache.move_to_end(key)
                return hit
        value = self._transform_context(user_id, [], context)
        with self._cache_lock:
            self._context_cache[key] = value
            while len(self._context_cache) > CONTEXT_CACHE:
                self._context_cache.popitem(last=False)
        return value

    def _parse_context(self, context: Mapping[str, str]) -> dict[str, Any]:
        """Request strings as the raw column types the pipeline declares."""
        row: dict[str, Any] = {}
        for name, text in context.items():
            logical = self.context_columns.get(name)
            if logical is None:
                known = ", ".join(sorted(self.context_columns))
                raise RequestError(
                    f"context[{name!r}]", f"not a raw column of the bundle ({known})"
                )
            if logical in ("int64", "float64"):
                try:
                    number = float(text)
                except ValueError:
                    raise RequestError(f"context[{name!r}]", f"{text!r} is not a number") from None
                row[name] = int(number) if logical == "int64" and number.is_integer() else number
            else:
                row[name] = text
        return row

    def _transform_context(
        self, user_id: str, item_ids: Sequence[str], context: Mapping[str, str]
    ) -> dict[str, Tensor]:
        base = {c: None for c in self.context_columns}
        base.update(self._parse_context(context))
        if self.user_raw_column in base:
            base[self.user_raw_column] = user_id
        if item_ids and self.item_raw_column in base:
            rows = [{**base, self.item_raw_column: i} for i in item_ids]
        else:
            rows = [base]
        try:
            table = self.pipeline.transform_batch(rows)
        except FeatureError as e:
            raise RequestError("context", str(e)) from e
        out = {}
        for f in self.context_features:
            if f.name in table.column_names:
                out[f.name] = _column_tensor(f, table[f.name])
        return out

    def _from_records(
        self, features: list[Feature], layout: TableLayout, records: np.ndarray, n: int
    ) -> dict[str, Tensor]:
        return {
            f.name: layout.tensor(records, f.name) if f.name in layout.names else _zeros(f, n)
            for f in features
        }

    def score(self, batch: dict[str, Tensor]) -> np.ndarray:
        """The ranker's logits for a batch (B)."""
        with torch.inference_mode():
            return self.bundle.ranker(batch).float().reshape(-1).numpy()

    # --------------------------------------------------------------- features

    def feature_rows(
        self, snapshot: str, entity: str, ids: Sequence[str], names: Sequence[str]
    ) -> tuple[TableLayout, np.ndarray, np.ndarray, list[str]]:
        layout = self.store.layout(snapshot, entity)
        unknown = [n for n in names if n not in layout.names]
        if unknown:
            raise RequestError("names", f"not {entity} features of {snapshot}: {unknown}")
        records, found = self.store.lookup(snapshot, entity, ids)
        return layout, records, found, list(names) or layout.names


def _column_tensor(feature: Feature, column: pa.ChunkedArray) -> Tensor:
    from recsys.export.tensors import to_tensors

    return to_tensors(pa.table({feature.name: column}), [feature], "context")[feature.name]


def open_store(bundle: Bundle, settings: ServeConfig) -> FeatureStore:
    if settings.remote.feature:
        from serving.feature_store.base import bundle_layouts
        from serving.feature_store.grpc_store import GrpcFeatureStore

        return GrpcFeatureStore(
            settings.remote.feature,
            bundle_layouts(bundle),
            model_version(bundle.path),
            settings.max_message_bytes,
        )
    if settings.feature_store == "memory":
        return MemoryFeatureStore(bundle)
    return RedisFeatureStore(settings.redis_url, settings.redis_prefix, bundle_id(bundle.path))
