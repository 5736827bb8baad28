from serving.proto.recsys.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("user_id", "user_vector", "k")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user_vector: _common_pb2.FloatList
    k: int
    def __init__(self, user_id: _Optional[str] = ..., user_vector: _Optional[_Union[_common_pb2.FloatList, _Mapping]] = ..., k: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("items", "model_version", "user_found")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_FOUND_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.ScoredItem]
    model_version: str
    user_found: bool
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.ScoredItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., user_found: _Optional[bool] = ...) -> None: ...
