import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]
    DTYPE_BFLOAT16: _ClassVar[Dtype]

class EmbeddingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_KIND_UNSPECIFIED: _ClassVar[EmbeddingKind]
    EMBEDDING_KIND_REDUCED: _ClassVar[EmbeddingKind]
    EMBEDDING_KIND_RAW: _ClassVar[EmbeddingKind]

class VersionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATUS_UNSPECIFIED: _ClassVar[VersionStatus]
    VERSION_STATUS_STAGED: _ClassVar[VersionStatus]
    VERSION_STATUS_ACTIVE: _ClassVar[VersionStatus]
    VERSION_STATUS_RETIRED: _ClassVar[VersionStatus]

class GraphTransform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_TRANSFORM_UNSPECIFIED: _ClassVar[GraphTransform]
    GRAPH_TRANSFORM_IDENTITY: _ClassVar[GraphTransform]
    GRAPH_TRANSFORM_LOG1P: _ClassVar[GraphTransform]
    GRAPH_TRANSFORM_TOP_K: _ClassVar[GraphTransform]
    GRAPH_TRANSFORM_PPMI: _ClassVar[GraphTransform]

class CatalogEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATALOG_EVENT_KIND_UNSPECIFIED: _ClassVar[CatalogEventKind]
    CATALOG_EVENT_KIND_SNAPSHOT: _ClassVar[CatalogEventKind]
    CATALOG_EVENT_KIND_VERSION_CREATED: _ClassVar[CatalogEventKind]
    CATALOG_EVENT_KIND_ACTIVATED: _ClassVar[CatalogEventKind]

class RefitPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFIT_PHASE_UNSPECIFIED: _ClassVar[RefitPhase]
    REFIT_PHASE_QUEUED: _ClassVar[RefitPhase]
    REFIT_PHASE_READING: _ClassVar[RefitPhase]
    REFIT_PHASE_MOMENTS: _ClassVar[RefitPhase]
    REFIT_PHASE_SOLVE: _ClassVar[RefitPhase]
    REFIT_PHASE_DIAGNOSTICS: _ClassVar[RefitPhase]
    REFIT_PHASE_WRITING: _ClassVar[RefitPhase]
    REFIT_PHASE_DONE: _ClassVar[RefitPhase]
DTYPE_UNSPECIFIED: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_FLOAT16: Dtype
DTYPE_BFLOAT16: Dtype
EMBEDDING_KIND_UNSPECIFIED: EmbeddingKind
EMBEDDING_KIND_REDUCED: EmbeddingKind
EMBEDDING_KIND_RAW: EmbeddingKind
VERSION_STATUS_UNSPECIFIED: VersionStatus
VERSION_STATUS_STAGED: VersionStatus
VERSION_STATUS_ACTIVE: VersionStatus
VERSION_STATUS_RETIRED: VersionStatus
GRAPH_TRANSFORM_UNSPECIFIED: GraphTransform
GRAPH_TRANSFORM_IDENTITY: GraphTransform
GRAPH_TRANSFORM_LOG1P: GraphTransform
GRAPH_TRANSFORM_TOP_K: GraphTransform
GRAPH_TRANSFORM_PPMI: GraphTransform
CATALOG_EVENT_KIND_UNSPECIFIED: CatalogEventKind
CATALOG_EVENT_KIND_SNAPSHOT: CatalogEventKind
CATALOG_EVENT_KIND_VERSION_CREATED: CatalogEventKind
CATALOG_EVENT_KIND_ACTIVATED: CatalogEventKind
REFIT_PHASE_UNSPECIFIED: RefitPhase
REFIT_PHASE_QUEUED: RefitPhase
REFIT_PHASE_READING: RefitPhase
REFIT_PHASE_MOMENTS: RefitPhase
REFIT_PHASE_SOLVE: RefitPhase
REFIT_PHASE_DIAGNOSTICS: RefitPhase
REFIT_PHASE_WRITING: RefitPhase
REFIT_PHASE_DONE: RefitPhase

class EncoderInfo(_message.Message):
    __slots__ = ("name", "dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("catalog", "items", "request_id")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    request_id: str
    def __init__(self, catalog: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("added", "changed", "unchanged", "item_count")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    added: int
    changed: int
    unchanged: int
    item_count: int
    def __init__(self, added: _Optional[int] = ..., changed: _Optional[int] = ..., unchanged: _Optional[int] = ..., item_count: _Optional[int] = ...) -> None: ...

class DescribeCatalogRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    def __init__(self, catalog: _Optional[str] = ...) -> None: ...

class DescribeCatalogResponse(_message.Message):
    __slots__ = ("catalog", "item_count", "encoder", "active_version", "versions", "cooccurrence")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    COOCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    item_count: int
    encoder: EncoderInfo
    active_version: int
    versions: _containers.RepeatedCompositeFieldContainer[CatalogVersion]
    cooccurrence: CooccurrenceTotals
    def __init__(self, catalog: _Optional[str] = ..., item_count: _Optional[int] = ..., encoder: _Optional[_Union[EncoderInfo, _Mapping]] = ..., active_version: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[CatalogVersion, _Mapping]]] = ..., cooccurrence: _Optional[_Union[CooccurrenceTotals, _Mapping]] = ...) -> None: ...

class CooccurrenceTotals(_message.Message):
    __slots__ = ("pairs", "total_weight", "batches")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    pairs: int
    total_weight: float
    batches: int
    def __init__(self, pairs: _Optional[int] = ..., total_weight: _Optional[float] = ..., batches: _Optional[int] = ...) -> None: ...

class GraphOptions(_message.Message):
    __slots__ = ("transform", "top_k")
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    transform: GraphTransform
    top_k: int
    def __init__(self, transform: _Optional[_Union[GraphTransform, str]] = ..., top_k: _Optional[int] = ...) -> None: ...

class FitParameters(_message.Message):
    __slots__ = ("dim", "lam", "retention_budget", "graph", "whitening")
    DIM_FIELD_NUMBER: _ClassVar[int]
    LAM_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BUDGET_FIELD_NUMBER: _ClassVar[int]
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    WHITENING_FIELD_NUMBER: _ClassVar[int]
    dim: int
    lam: float
    retention_budget: float
    graph: GraphOptions
    whitening: float
    def __init__(self, dim: _Optional[int] = ..., lam: _Optional[float] = ..., retention_budget: _Optional[float] = ..., graph: _Optional[_Union[GraphOptions, _Mapping]] = ..., whitening: _Optional[float] = ...) -> None: ...

class FitDiagnostics(_message.Message):
    __slots__ = ("lam", "retention_budget", "retained_variance", "graph_tv", "alignment", "pca_retained_variance", "pca_graph_tv", "pca_alignment", "alignment_k", "n_items", "n_edges", "graph_to_scatter_trace", "whitening")
    LAM_FIELD_NUMBER: _ClassVar[int]
    RETENTION_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RETAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_TV_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    PCA_RETAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    PCA_GRAPH_TV_FIELD_NUMBER: _ClassVar[int]
    PCA_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_K_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    N_EDGES_FIELD_NUMBER: _ClassVar[int]
    GRAPH_TO_SCATTER_TRACE_FIELD_NUMBER: _ClassVar[int]
    WHITENING_FIELD_NUMBER: _ClassVar[int]
    lam: float
    retention_budget: float
    retained_variance: float
    graph_tv: float
    alignment: float
    pca_retained_variance: float
    pca_graph_tv: float
    pca_alignment: float
    alignment_k: int
    n_items: int
    n_edges: int
    graph_to_scatter_trace: float
    whitening: float
    def __init__(self, lam: _Optional[float] = ..., retention_budget: _Optional[float] = ..., retained_variance: _Optional[float] = ..., graph_tv: _Optional[float] = ..., alignment: _Optional[float] = ..., pca_retained_variance: _Optional[float] = ..., pca_graph_tv: _Optional[float] = ..., pca_alignment: _Optional[float] = ..., alignment_k: _Optional[int] = ..., n_items: _Optional[int] = ..., n_edges: _Optional[int] = ..., graph_to_scatter_trace: _Optional[float] = ..., whitening: _Optional[float] = ...) -> None: ...

class CatalogVersion(_message.Message):
    __slots__ = ("version", "status", "item_count", "encoder", "parameters", "diagnostics", "cooccurrence", "create_time", "activate_time", "fit_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    COOCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    status: VersionStatus
    item_count: int
    encoder: EncoderInfo
    parameters: FitParameters
    diagnostics: FitDiagnostics
    cooccurrence: CooccurrenceTotals
    create_time: _timestamp_pb2.Timestamp
    activate_time: _timestamp_pb2.Timestamp
    fit_seconds: float
    def __init__(self, version: _Optional[int] = ..., status: _Optional[_Union[VersionStatus, str]] = ..., item_count: _Optional[int] = ..., encoder: _Optional[_Union[EncoderInfo, _Mapping]] = ..., parameters: _Optional[_Union[FitParameters, _Mapping]] = ..., diagnostics: _Optional[_Union[FitDiagnostics, _Mapping]] = ..., cooccurrence: _Optional[_Union[CooccurrenceTotals, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., activate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fit_seconds: _Optional[float] = ...) -> None: ...

class GetItemEmbeddingsRequest(_message.Message):
    __slots__ = ("catalog", "version", "item_ids", "dtype", "kind", "max_chunk_bytes", "omit_item_ids", "dim")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    OMIT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    version: int
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    dtype: Dtype
    kind: EmbeddingKind
    max_chunk_bytes: int
    omit_item_ids: bool
    dim: int
    def __init__(self, catalog: _Optional[str] = ..., version: _Optional[int] = ..., item_ids: _Optional[_Iterable[str]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., kind: _Optional[_Union[EmbeddingKind, str]] = ..., max_chunk_bytes: _Optional[int] = ..., omit_item_ids: _Optional[bool] = ..., dim: _Optional[int] = ...) -> None: ...

class EmbeddingHeader(_message.Message):
    __slots__ = ("version", "dim", "dtype", "kind", "item_count", "encoder")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    version: int
    dim: int
    dtype: Dtype
    kind: EmbeddingKind
    item_count: int
    encoder: EncoderInfo
    def __init__(self, version: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., kind: _Optional[_Union[EmbeddingKind, str]] = ..., item_count: _Optional[int] = ..., encoder: _Optional[_Union[EncoderInfo, _Mapping]] = ...) -> None: ...

class GetItemEmbeddingsResponse(_message.Message):
    __slots__ = ("header", "start", "rows", "item_ids", "vectors")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    header: EmbeddingHeader
    start: int
    rows: bytes
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    vectors: bytes
    def __init__(self, header: _Optional[_Union[EmbeddingHeader, _Mapping]] = ..., start: _Optional[int] = ..., rows: _Optional[bytes] = ..., item_ids: _Optional[_Iterable[str]] = ..., vectors: _Optional[bytes] = ...) -> None: ...

class PushCooccurrenceRequest(_message.Message):
    __slots__ = ("catalog", "worker_id", "batch_id", "rows", "cols", "weights")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    worker_id: str
    batch_id: str
    rows: bytes
    cols: bytes
    weights: bytes
    def __init__(self, catalog: _Optional[str] = ..., worker_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., rows: _Optional[bytes] = ..., cols: _Optional[bytes] = ..., weights: _Optional[bytes] = ...) -> None: ...

class PushCooccurrenceResponse(_message.Message):
    __slots__ = ("batches_applied", "duplicates_ignored", "pairs_added", "weight_added", "totals")
    BATCHES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_IGNORED_FIELD_NUMBER: _ClassVar[int]
    PAIRS_ADDED_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_ADDED_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    batches_applied: int
    duplicates_ignored: int
    pairs_added: int
    weight_added: float
    totals: CooccurrenceTotals
    def __init__(self, batches_applied: _Optional[int] = ..., duplicates_ignored: _Optional[int] = ..., pairs_added: _Optional[int] = ..., weight_added: _Optional[float] = ..., totals: _Optional[_Union[CooccurrenceTotals, _Mapping]] = ...) -> None: ...

class RefitProjectionRequest(_message.Message):
    __slots__ = ("catalog", "parameters", "activate", "request_id")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    parameters: FitParameters
    activate: bool
    request_id: str
    def __init__(self, catalog: _Optional[str] = ..., parameters: _Optional[_Union[FitParameters, _Mapping]] = ..., activate: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RefitProjectionResponse(_message.Message):
    __slots__ = ("version", "previous_active_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: CatalogVersion
    previous_active_version: int
    def __init__(self, version: _Optional[_Union[CatalogVersion, _Mapping]] = ..., previous_active_version: _Optional[int] = ...) -> None: ...

class ActivateVersionRequest(_message.Message):
    __slots__ = ("catalog", "version")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    version: int
    def __init__(self, catalog: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ActivateVersionResponse(_message.Message):
    __slots__ = ("previous_active_version", "active_version")
    PREVIOUS_ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_active_version: int
    active_version: int
    def __init__(self, previous_active_version: _Optional[int] = ..., active_version: _Optional[int] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("catalog", "version", "item_id", "vector", "k", "dim", "include_texts")
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXTS_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    version: int
    item_id: str
    vector: bytes
    k: int
    dim: int
    include_texts: bool
    def __init__(self, catalog: _Optional[str] = ..., version: _Optional[int] = ..., item_id: _Optional[str] = ..., vector: _Optional[bytes] = ..., k: _Optional[int] = ..., dim: _Optional[int] = ..., include_texts: _Optional[bool] = ...) -> None: ...

class SimilarItem(_message.Message):
    __slots__ = ("item_id", "row", "score", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    row: int
    score: float
    text: str
    def __init__(self, item_id: _Optional[str] = ..., row: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("version", "items")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    items: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    def __init__(self, version: _Optional[int] = ..., items: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ...) -> None: ...

class WatchCatalogRequest(_message.Message):
    __slots__ = ("catalog",)
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    catalog: str
    def __init__(self, catalog: _Optional[str] = ...) -> None: ...

class WatchCatalogResponse(_message.Message):
    __slots__ = ("kind", "active_version", "version", "item_count", "versions")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    kind: CatalogEventKind
    active_version: int
    version: CatalogVersion
    item_count: int
    versions: _containers.RepeatedCompositeFieldContainer[CatalogVersion]
    def __init__(self, kind: _Optional[_Union[CatalogEventKind, str]] = ..., active_version: _Optional[int] = ..., version: _Optional[_Union[CatalogVersion, _Mapping]] = ..., item_count: _Optional[int] = ..., versions: _Optional[_Iterable[_Union[CatalogVersion, _Mapping]]] = ...) -> None: ...

class OperationError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class RefitOperation(_message.Message):
    __slots__ = ("name", "catalog", "phase", "fraction", "done", "response", "error", "create_time", "update_time", "request")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    catalog: str
    phase: RefitPhase
    fraction: float
    done: bool
    response: RefitProjectionResponse
    error: OperationError
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    request: RefitProjectionRequest
    def __init__(self, name: _Optional[str] = ..., catalog: _Optional[str] = ..., phase: _Optional[_Union[RefitPhase, str]] = ..., fraction: _Optional[float] = ..., done: _Optional[bool] = ..., response: _Optional[_Union[RefitProjectionResponse, _Mapping]] = ..., error: _Optional[_Union[OperationError, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request: _Optional[_Union[RefitProjectionRequest, _Mapping]] = ...) -> None: ...

class StartRefitRequest(_message.Message):
    __slots__ = ("refit",)
    REFIT_FIELD_NUMBER: _ClassVar[int]
    refit: RefitProjectionRequest
    def __init__(self, refit: _Optional[_Union[RefitProjectionRequest, _Mapping]] = ...) -> None: ...

class StartRefitResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: RefitOperation
    def __init__(self, operation: _Optional[_Union[RefitOperation, _Mapping]] = ...) -> None: ...

class GetRefitOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRefitOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: RefitOperation
    def __init__(self, operation: _Optional[_Union[RefitOperation, _Mapping]] = ...) -> None: ...

class WatchRefitOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchRefitOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: RefitOperation
    def __init__(self, operation: _Optional[_Union[RefitOperation, _Mapping]] = ...) -> None: ...
