"""Features in Redis (`feature_store=redis`): one string value per (snapshot, entity, id).

Keys: `<prefix>:<bundle id>:<snapshot>:<entity>:<raw id>` -> the id's record bytes (the
layout of serving/feature_store/layout.py); `<prefix>:<bundle id>:meta` -> JSON of the four
layouts and row counts, written last by the loader, so a half-loaded bundle is never read.
The bundle id (first 16 hex digits of the manifest's sha256) keeps versions apart: a server
reloading a new bundle reads the new bundle's keys while the old ones still serve.

Reads are pipelined: one MGET per chunk of ids, all chunks in one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from serving.feature_store.base import check_key
from serving.feature_store.layout import ENTITIES, SNAPSHOTS, FeatureStoreError, TableLayout

CHUNK = 512  # keys per MGET / per pipelined SET batch


def key_prefix(prefix: str, bundle_id: str) -> str:
    return f"{prefix}:{bundle_id}"


def _connect(url: str) -> Any:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        client.ping()
    except (redis.RedisError, ValueError) as e:
        raise FeatureStoreError(f"redis_url={url}: cannot connect: {e}") from e
    return client


class RedisFeatureStore:
    """Reads a bundle's features that `python -m serving.feature_store.load` wrote."""

    kind = "redis"

    def __init__(self, url: str, prefix: str, bundle_id: str) -> None:
        self.url = url
        self._base = key_prefix(prefix, bundle_id)
        self._client = _connect(url)
        meta_raw = self._client.get(f"{self._base}:meta")
        if meta_raw is None:
            raise FeatureStoreError(
                f"redis_url={url} holds no features of bundle {bundle_id} (key {self._base}:meta "
                "is missing); run `python -m serving.feature_store.load bundle=<dir> "
                f"redis_url={url}` first"
            )
        meta = json.loads(meta_raw)
        self.rows: dict[str, int] = meta["rows"]
        self._layouts = {
            (d["snapshot"], d["entity"]): TableLayout.from_json(d) for d in meta["layouts"]
        }
        self._dtypes = {key: layout.dtype for key, layout in self._layouts.items()}

    def layout(self, snapshot: str, entity: str) -> TableLayout:
        check_key(snapshot, entity)
        return self._layouts[(snapshot, entity)]

    def lookup(
        self, snapshot: str, entity: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        check_key(snapshot, entity)
        dtype = self._dtypes[(snapshot, entity)]
        keys = [f"{self._base}:{snapshot}:{entity}:{i}" for i in ids]
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(keys), CHUNK):
            pipe.mget(keys[start : start + CHUNK])
        values = [v for chunk in pipe.execute() for v in chunk]
        found = np.fromiter((v is not None for v in values), bool, count=len(values))
        zero = bytes(dtype.itemsize)
        blob = b"".join(zero if v is None else v for v in values)
        if len(blob) != dtype.itemsize * len(values):
            raise FeatureStoreError(
                f"redis {self._base}: a {snapshot} {entity} record has the wrong size "
                "(written by another layout); reload the bundle's features"
            )
        return np.frombuffer(blob, dtype).copy(), found

    def close(self) -> None:
        self._client.close()


def write_features(
    url: str,
    prefix: str,
    bundle_id: str,
    tables: Iterable[tuple[TableLayout, list[str], np.ndarray]],
) -> dict[str, int]:
    """Write every (layout, raw ids, records) table, then the meta key; return row counts."""
    client = _connect(url)
    base = key_prefix(prefix, bundle_id)
    rows: dict[str, int] = {}
    layouts = []
    try:
        client.delete(f"{base}:meta")  # readers never see a half-rewritten bundle
        for layout, ids, records in tables:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(ids), CHUNK):
                chunk = records[start : start + CHUNK]
                pipe.mset(
                    {
                        f"{base}:{layout.snapshot}:{layout.entity}:{i}": chunk[j].tobytes()
                        for j, i in enumerate(ids[start : start + CHUNK])
                    }
                )
                if len(pipe) >= 16:
                    pipe.execute()
            pipe.execute()
            rows[f"{layout.snapshot}/{layout.entity}"] = len(ids)
            layouts.append(layout.to_json())
        expected = {f"{s}/{e}" for s in SNAPSHOTS for e in ENTITIES}
        if set(rows) != expected:
            raise FeatureStoreError(f"write_features got tables {sorted(rows)}, not {expected}")
        client.set(f"{base}:meta", json.dumps({"rows": rows, "layouts": layouts}))
    finally:
        client.close()
    return rows
