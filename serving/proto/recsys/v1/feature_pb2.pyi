from serving.proto.recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeaturesRequest(_message.Message):
    __slots__ = ("ids", "snapshot", "names")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    snapshot: str
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., snapshot: _Optional[str] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class FeatureRow(_message.Message):
    __slots__ = ("id", "found", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.FeatureValue, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    id: str
    found: bool
    values: _containers.MessageMap[str, _common_pb2.FeatureValue]
    def __init__(self, id: _Optional[str] = ..., found: _Optional[bool] = ..., values: _Optional[_Mapping[str, _common_pb2.FeatureValue]] = ...) -> None: ...

class FeaturesResponse(_message.Message):
    __slots__ = ("rows", "model_version")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[FeatureRow]
    model_version: str
    def __init__(self, rows: _Optional[_Iterable[_Union[FeatureRow, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...
