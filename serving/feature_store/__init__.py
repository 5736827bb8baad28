"""Feature stores: `memory` (the bundle's snapshots in this process) and `redis`."""

from serving.feature_store.base import FeatureStore, MemoryFeatureStore
from serving.feature_store.layout import FeatureStoreError, TableLayout
from serving.feature_store.redis_store import RedisFeatureStore, write_features

__all__ = [
    "FeatureStore",
    "FeatureStoreError",
    "MemoryFeatureStore",
    "RedisFeatureStore",
    "TableLayout",
    "write_features",
]
