from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("int64_value", "float_value", "int64_list", "float_list")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_LIST_FIELD_NUMBER: _ClassVar[int]
    FLOAT_LIST_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    float_value: float
    int64_list: Int64List
    float_list: FloatList
    def __init__(self, int64_value: _Optional[int] = ..., float_value: _Optional[float] = ..., int64_list: _Optional[_Union[Int64List, _Mapping]] = ..., float_list: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("features_ms", "recall_ms", "rank_ms", "total_ms")
    FEATURES_MS_FIELD_NUMBER: _ClassVar[int]
    RECALL_MS_FIELD_NUMBER: _ClassVar[int]
    RANK_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    features_ms: float
    recall_ms: float
    rank_ms: float
    total_ms: float
    def __init__(self, features_ms: _Optional[float] = ..., recall_ms: _Optional[float] = ..., rank_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...
