"""Features from a Feature server over gRPC (serve config `remote.feature`).

The recall and ranking stages of this process then look users and items up through
`recsys.v1.Feature` instead of their own memory or Redis store: the same `FeatureStore`
interface, so the request path does not change. Rows come back as typed FeatureValues and
are packed into this bundle's record layouts; the Feature server must serve the same bundle
(its reply's model_version is checked), since another bundle's vocabularies would encode ids
differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from serving.feature_store.base import check_key
from serving.feature_store.layout import FeatureStoreError, TableLayout
from serving.proto.recsys.v1 import feature_pb2, feature_pb2_grpc

TIMEOUT_S = 5.0


class GrpcFeatureStore:
    kind = "grpc"

    def __init__(
        self,
        target: str,
        layouts: dict[tuple[str, str], TableLayout],
        version: str,
        max_message_bytes: int,
    ) -> None:
        self.target = target
        self.version = version
        self._layouts = layouts
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = feature_pb2_grpc.FeatureStub(self._channel)

    def layout(self, snapshot: str, entity: str) -> TableLayout:
        check_key(snapshot, entity)
        return self._layouts[(snapshot, entity)]

    def lookup(
        self, snapshot: str, entity: str, ids: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        layout = self.layout(snapshot, entity)
        call = self._stub.GetUserFeatures if entity == "user" else self._stub.GetItemFeatures
        try:
            reply = call(
                feature_pb2.FeaturesRequest(ids=list(ids), snapshot=snapshot), timeout=TIMEOUT_S
            )
        except grpc.RpcError as e:
            message = f"feature server {self.target}: {e.code().name}: {e.details()}"
            raise FeatureStoreError(message) from e
        # the same manifest hash (the directory name may differ between machines)
        if reply.model_version.rsplit("-", 1)[-1] != self.version.rsplit("-", 1)[-1]:
            raise FeatureStoreError(
                f"feature server {self.target} serves {reply.model_version}, this process "
                f"{self.version}: their encodings may differ"
            )
        records = np.zeros(len(ids), layout.dtype)
        found = np.zeros(len(ids), bool)
        for j, row in enumerate(reply.rows):
            found[j] = row.found
            if not row.found:
                continue
            for c in layout.columns:
                value = row.values[c.name]
                kind = value.WhichOneof("kind")
                if kind == "int64_list":
                    records[c.name][j] = value.int64_list.values
                elif kind == "int64_value":
                    records[c.name][j] = value.int64_value
                elif kind == "float_value":
                    records[c.name][j] = value.float_value
                else:
                    raise FeatureStoreError(f"feature server {self.target}: {c.name} is {kind}")
        return records, found

    def close(self) -> None:
        self._channel.close()
