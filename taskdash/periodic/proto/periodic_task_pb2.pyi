from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceRegistryRequest(_message.Message):
    __slots__ = ("service_name",)
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    def __init__(self, service_name: _Optional[str] = ...) -> None: ...

class ServiceRegistryReply(_message.Message):
    __slots__ = ("secret",)
    SECRET_FIELD_NUMBER: _ClassVar[int]
    secret: str
    def __init__(self, secret: _Optional[str] = ...) -> None: ...

class CreatePeriodicTaskQueueRequest(_message.Message):
    __slots__ = ("service_name", "secret", "queue_name")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    secret: str
    queue_name: str
    def __init__(self, service_name: _Optional[str] = ..., secret: _Optional[str] = ..., queue_name: _Optional[str] = ...) -> None: ...

class CreatePeriodicTaskQueueReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class StartPeriodicTaskQueueRequest(_message.Message):
    __slots__ = ("service_name", "secret", "queue_name")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    secret: str
    queue_name: str
    def __init__(self, service_name: _Optional[str] = ..., secret: _Optional[str] = ..., queue_name: _Optional[str] = ...) -> None: ...

class StartPeriodicTaskQueueReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class CreateTaskRequest(_message.Message):
    __slots__ = ("service_name", "secret", "queue_name", "task_type", "task_data")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    TASK_DATA_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    secret: str
    queue_name: str
    task_type: str
    task_data: str
    def __init__(self, service_name: _Optional[str] = ..., secret: _Optional[str] = ..., queue_name: _Optional[str] = ..., task_type: _Optional[str] = ..., task_data: _Optional[str] = ...) -> None: ...

class CreateTaskReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class GetTaskListRequest(_message.Message):
    __slots__ = ("service_name", "secret", "queue_name", "limit")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    secret: str
    queue_name: str
    limit: int
    def __init__(self, service_name: _Optional[str] = ..., secret: _Optional[str] = ..., queue_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class GetTaskListReply(_message.Message):
    __slots__ = ("task_list",)
    TASK_LIST_FIELD_NUMBER: _ClassVar[int]
    task_list: str
    def __init__(self, task_list: _Optional[str] = ...) -> None: ...

class CompleteTaskRequest(_message.Message):
    __slots__ = ("service_name", "secret", "queue_name", "task_id", "success")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    secret: str
    queue_name: str
    task_id: int
    success: bool
    def __init__(self, service_name: _Optional[str] = ..., secret: _Optional[str] = ..., queue_name: _Optional[str] = ..., task_id: _Optional[int] = ..., success: _Optional[bool] = ...) -> None: ...

class CompleteTaskReply(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...
