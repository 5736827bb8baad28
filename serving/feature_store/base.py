"""The feature store interface the serving stages use, and the in-memory store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from recsys.export.reader import Bundle
from serving.feature_store.layout import (
    ENTITIES,
    SNAPSHOTS,
    FeatureStoreError,
    TableLayout,
    layout_of,
    raw_ids,
)


class FeatureStore(Protocol):
    """Encoded features of users and items by raw id, per snapshot (ranker | retrieval)."""

    kind: str

    def layout(self, snapshot: str, entity: str) -> TableLayout: ...

    def lookup(
        self, snapshot: str, entity: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(records in `ids` order, found mask); an unknown id's record is all zeros (the
        missing encoding, as `FeatureSnapshot.rows` gives it)."""
        ...

    def close(self) -> None: ...


def bundle_layouts(bundle: Bundle) -> dict[tuple[str, str], TableLayout]:
    snaps = {"ranker": bundle.ranker_features, "retrieval": bundle.retrieval_features}
    return {(s, e): layout_of(s, e, snaps[s]) for s in SNAPSHOTS for e in ENTITIES}


def check_key(snapshot: str, entity: str) -> None:
    if snapshot not in SNAPSHOTS:
        raise FeatureStoreError(f"snapshot {snapshot!r} is not one of {SNAPSHOTS}")
    if entity not in ENTITIES:
        raise FeatureStoreError(f"entity {entity!r} is not one of {ENTITIES}")


class MemoryFeatureStore:
    """The bundle's snapshots as record arrays in this process (`feature_store=memory`).

    A lookup maps ids to rows with a dict (one hash probe per id) and gathers the records
    with one numpy take; row N of each array is the all-zero record of unknown ids.
    """

    kind = "memory"

    def __init__(self, bundle: Bundle) -> None:
        snaps = {"ranker": bundle.ranker_features, "retrieval": bundle.retrieval_features}
        self._layouts = bundle_layouts(bundle)
        self._records: dict[tuple[str, str], np.ndarray] = {}
        self._rows: dict[tuple[str, str], dict[str, int]] = {}
        for (snapshot, entity), layout in self._layouts.items():
            snap = snaps[snapshot]
            table = snap.users if entity == "user" else snap.items
            records = layout.encode(table)
            self._records[(snapshot, entity)] = np.concatenate([records, np.zeros(1, layout.dtype)])
            self._rows[(snapshot, entity)] = {r: i for i, r in enumerate(raw_ids(snap, entity))}

    def layout(self, snapshot: str, entity: str) -> TableLayout:
        check_key(snapshot, entity)
        return self._layouts[(snapshot, entity)]

    def lookup(
        self, snapshot: str, entity: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        check_key(snapshot, entity)
        rows_of = self._rows[(snapshot, entity)]
        records = self._records[(snapshot, entity)]
        missing = len(records) - 1
        rows = np.fromiter((rows_of.get(i, missing) for i in ids), np.int64, count=len(ids))
        return records[rows], rows != missing

    def table(self, snapshot: str, entity: str) -> tuple[np.ndarray, Mapping[str, int]]:
        """Every record of a table in row order, and the raw id -> row mapping."""
        check_key(snapshot, entity)
        return self._records[(snapshot, entity)][:-1], self._rows[(snapshot, entity)]

    def all_records(self, snapshot: str, entity: str) -> tuple[list[str], np.ndarray]:
        """Every (raw id, record) of a table, for the Redis loader."""
        records, rows_of = self.table(snapshot, entity)
        return sorted(rows_of, key=rows_of.__getitem__), records

    def close(self) -> None:
        pass
