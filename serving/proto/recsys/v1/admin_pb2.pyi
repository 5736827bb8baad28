from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadRequest(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: str
    def __init__(self, bundle: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("model_version", "previous_version", "load_seconds")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    previous_version: str
    load_seconds: float
    def __init__(self, model_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("model_version", "bundle", "items", "users", "feature_store", "in_flight", "services")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_STORE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    bundle: str
    items: int
    users: int
    feature_store: str
    in_flight: int
    services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_version: _Optional[str] = ..., bundle: _Optional[str] = ..., items: _Optional[int] = ..., users: _Optional[int] = ..., feature_store: _Optional[str] = ..., in_flight: _Optional[int] = ..., services: _Optional[_Iterable[str]] = ...) -> None: ...
