"""The committed gRPC modules match the .proto files, and the API is typed (no blobs)."""

from __future__ import annotations

from pathlib import Path

from serving.proto.generate import PACKAGE_DIR, generate, generated_names
from serving.proto.recsys.v1 import common_pb2, feature_pb2, recall_pb2, recommender_pb2


def test_committed_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert len(written) == len(generated_names()) >= 15
    stale = [
        path.name
        for path in written
        if not (PACKAGE_DIR / path.name).is_file()
        or (PACKAGE_DIR / path.name).read_text() != path.read_text()
    ]
    assert not stale, f"run `make proto`: stale or missing generated modules {stale}"


def test_no_message_carries_opaque_bytes() -> None:
    for module in (common_pb2, feature_pb2, recall_pb2, recommender_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            kinds = {field.type for field in message.fields}
            assert message.fields_by_name, message.full_name
            assert 12 not in kinds, f"{message.full_name} has a bytes field"  # TYPE_BYTES


def test_feature_values_are_typed_by_a_oneof() -> None:
    value = common_pb2.FeatureValue(int64_list=common_pb2.Int64List(values=[3, 0]))
    assert value.WhichOneof("kind") == "int64_list"
    assert common_pb2.FeatureValue(float_value=0.5).WhichOneof("kind") == "float_value"
    request = recommender_pb2.RecommendRequest(user_id="u1", k=3, context={"device": "a"})
    assert recommender_pb2.RecommendRequest.FromString(request.SerializeToString()) == request
