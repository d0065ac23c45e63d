import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_IMPORT: _ClassVar[JobKind]
    JOB_KIND_FIT_KMEANS: _ClassVar[JobKind]
    JOB_KIND_FIT_PCA: _ClassVar[JobKind]
    JOB_KIND_SEGMENT: _ClassVar[JobKind]
    JOB_KIND_CLV: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    BACKEND_AUTO: _ClassVar[Backend]
    BACKEND_GPU: _ClassVar[Backend]
    BACKEND_CPU: _ClassVar[Backend]

class InitMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INIT_METHOD_UNSPECIFIED: _ClassVar[InitMethod]
    INIT_METHOD_KMEANS_PLUS_PLUS: _ClassVar[InitMethod]
    INIT_METHOD_KMEANS_PARALLEL: _ClassVar[InitMethod]
    INIT_METHOD_RANDOM: _ClassVar[InitMethod]
    INIT_METHOD_GIVEN: _ClassVar[InitMethod]

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_CSV: _ClassVar[FileFormat]
    FILE_FORMAT_PARQUET: _ClassVar[FileFormat]

class BadRowPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAD_ROW_POLICY_UNSPECIFIED: _ClassVar[BadRowPolicy]
    BAD_ROW_POLICY_SKIP: _ClassVar[BadRowPolicy]
    BAD_ROW_POLICY_REJECT: _ClassVar[BadRowPolicy]

class TimeUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_UNIT_UNSPECIFIED: _ClassVar[TimeUnit]
    TIME_UNIT_DAY: _ClassVar[TimeUnit]
    TIME_UNIT_WEEK: _ClassVar[TimeUnit]
    TIME_UNIT_MONTH: _ClassVar[TimeUnit]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_IMPORT: JobKind
JOB_KIND_FIT_KMEANS: JobKind
JOB_KIND_FIT_PCA: JobKind
JOB_KIND_SEGMENT: JobKind
JOB_KIND_CLV: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
BACKEND_UNSPECIFIED: Backend
BACKEND_AUTO: Backend
BACKEND_GPU: Backend
BACKEND_CPU: Backend
INIT_METHOD_UNSPECIFIED: InitMethod
INIT_METHOD_KMEANS_PLUS_PLUS: InitMethod
INIT_METHOD_KMEANS_PARALLEL: InitMethod
INIT_METHOD_RANDOM: InitMethod
INIT_METHOD_GIVEN: InitMethod
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_CSV: FileFormat
FILE_FORMAT_PARQUET: FileFormat
BAD_ROW_POLICY_UNSPECIFIED: BadRowPolicy
BAD_ROW_POLICY_SKIP: BadRowPolicy
BAD_ROW_POLICY_REJECT: BadRowPolicy
TIME_UNIT_UNSPECIFIED: TimeUnit
TIME_UNIT_DAY: TimeUnit
TIME_UNIT_WEEK: TimeUnit
TIME_UNIT_MONTH: TimeUnit

class UploadRequest(_message.Message):
    __slots__ = ("header", "rows")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    rows: RowBlock
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., rows: _Optional[_Union[RowBlock, _Mapping]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("name", "columns", "n_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    n_rows: int
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., n_rows: _Optional[int] = ...) -> None: ...

class RowBlock(_message.Message):
    __slots__ = ("values", "values_f32le")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VALUES_F32LE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    values_f32le: bytes
    def __init__(self, values: _Optional[_Iterable[float]] = ..., values_f32le: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "name", "n_rows", "n_cols", "columns", "size_bytes", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    N_COLS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    n_rows: int
    n_cols: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., n_rows: _Optional[int] = ..., n_cols: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ImportRequest(_message.Message):
    __slots__ = ("path", "columns", "name", "text_format")
    PATH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    path: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    name: str
    text_format: TextFormat
    def __init__(self, path: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., name: _Optional[str] = ..., text_format: _Optional[_Union[TextFormat, _Mapping]] = ...) -> None: ...

class TextFormat(_message.Message):
    __slots__ = ("delimiter", "decimal_comma", "date_format")
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_COMMA_FIELD_NUMBER: _ClassVar[int]
    DATE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    delimiter: str
    decimal_comma: bool
    date_format: str
    def __init__(self, delimiter: _Optional[str] = ..., decimal_comma: _Optional[bool] = ..., date_format: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("id", "cascade")
    ID_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    id: str
    cascade: bool
    def __init__(self, id: _Optional[str] = ..., cascade: _Optional[bool] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "deleted_ids")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[bool] = ..., deleted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("phase", "run", "iteration", "inertia", "fraction", "elapsed_seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    run: int
    iteration: int
    inertia: float
    fraction: float
    elapsed_seconds: float
    def __init__(self, phase: _Optional[str] = ..., run: _Optional[int] = ..., iteration: _Optional[int] = ..., inertia: _Optional[float] = ..., fraction: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "kind", "state", "progress", "dataset", "kmeans", "pca", "segmentation", "clv", "error", "created_at", "finished_at", "error_code")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    KMEANS_FIELD_NUMBER: _ClassVar[int]
    PCA_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    CLV_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: JobKind
    state: JobState
    progress: JobProgress
    dataset: Dataset
    kmeans: KMeansModel
    pca: PcaModel
    segmentation: Segmentation
    clv: ClvRun
    error: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    error_code: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., kmeans: _Optional[_Union[KMeansModel, _Mapping]] = ..., pca: _Optional[_Union[PcaModel, _Mapping]] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., clv: _Optional[_Union[ClvRun, _Mapping]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_code: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("progress", "finished")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    progress: JobProgress
    finished: Job
    def __init__(self, progress: _Optional[_Union[JobProgress, _Mapping]] = ..., finished: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PartitionKey(_message.Message):
    __slots__ = ("fit_id", "index")
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    fit_id: str
    index: int
    def __init__(self, fit_id: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class PartitionHeader(_message.Message):
    __slots__ = ("key", "n_features", "has_weights", "ttl_seconds", "n_rows")
    KEY_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HAS_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    key: PartitionKey
    n_features: int
    has_weights: bool
    ttl_seconds: int
    n_rows: int
    def __init__(self, key: _Optional[_Union[PartitionKey, _Mapping]] = ..., n_features: _Optional[int] = ..., has_weights: _Optional[bool] = ..., ttl_seconds: _Optional[int] = ..., n_rows: _Optional[int] = ...) -> None: ...

class PartitionRows(_message.Message):
    __slots__ = ("values_f32le", "weights_f32le")
    VALUES_F32LE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_F32LE_FIELD_NUMBER: _ClassVar[int]
    values_f32le: bytes
    weights_f32le: bytes
    def __init__(self, values_f32le: _Optional[bytes] = ..., weights_f32le: _Optional[bytes] = ...) -> None: ...

class PutPartitionRequest(_message.Message):
    __slots__ = ("header", "rows")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    header: PartitionHeader
    rows: PartitionRows
    def __init__(self, header: _Optional[_Union[PartitionHeader, _Mapping]] = ..., rows: _Optional[_Union[PartitionRows, _Mapping]] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("key", "n_rows", "n_features", "replaced", "ttl_seconds")
    KEY_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    key: PartitionKey
    n_rows: int
    n_features: int
    replaced: bool
    ttl_seconds: float
    def __init__(self, key: _Optional[_Union[PartitionKey, _Mapping]] = ..., n_rows: _Optional[int] = ..., n_features: _Optional[int] = ..., replaced: _Optional[bool] = ..., ttl_seconds: _Optional[float] = ...) -> None: ...

class ReleasePartitionsRequest(_message.Message):
    __slots__ = ("fit_id",)
    FIT_ID_FIELD_NUMBER: _ClassVar[int]
    fit_id: str
    def __init__(self, fit_id: _Optional[str] = ...) -> None: ...

class ReleasePartitionsResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class InlineRows(_message.Message):
    __slots__ = ("values_f32le", "n_features", "weights_f32le")
    VALUES_F32LE_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_F32LE_FIELD_NUMBER: _ClassVar[int]
    values_f32le: bytes
    n_features: int
    weights_f32le: bytes
    def __init__(self, values_f32le: _Optional[bytes] = ..., n_features: _Optional[int] = ..., weights_f32le: _Optional[bytes] = ...) -> None: ...

class RowSource(_message.Message):
    __slots__ = ("partition", "rows")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    partition: PartitionKey
    rows: InlineRows
    def __init__(self, partition: _Optional[_Union[PartitionKey, _Mapping]] = ..., rows: _Optional[_Union[InlineRows, _Mapping]] = ...) -> None: ...

class PartialStepRequest(_message.Message):
    __slots__ = ("rows", "centroids", "backend")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    rows: RowSource
    centroids: _containers.RepeatedScalarFieldContainer[float]
    backend: Backend
    def __init__(self, rows: _Optional[_Union[RowSource, _Mapping]] = ..., centroids: _Optional[_Iterable[float]] = ..., backend: _Optional[_Union[Backend, str]] = ...) -> None: ...

class ClusterSums(_message.Message):
    __slots__ = ("k", "n_features", "sums", "weights", "inertia", "n_rows")
    K_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    SUMS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    k: int
    n_features: int
    sums: _containers.RepeatedScalarFieldContainer[float]
    weights: _containers.RepeatedScalarFieldContainer[float]
    inertia: float
    n_rows: int
    def __init__(self, k: _Optional[int] = ..., n_features: _Optional[int] = ..., sums: _Optional[_Iterable[float]] = ..., weights: _Optional[_Iterable[float]] = ..., inertia: _Optional[float] = ..., n_rows: _Optional[int] = ...) -> None: ...

class PartitionCostRequest(_message.Message):
    __slots__ = ("rows", "centers", "backend")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    rows: RowSource
    centers: _containers.RepeatedScalarFieldContainer[float]
    backend: Backend
    def __init__(self, rows: _Optional[_Union[RowSource, _Mapping]] = ..., centers: _Optional[_Iterable[float]] = ..., backend: _Optional[_Union[Backend, str]] = ...) -> None: ...

class PartitionCostResponse(_message.Message):
    __slots__ = ("cost", "n_rows", "total_weight")
    COST_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    cost: float
    n_rows: int
    total_weight: float
    def __init__(self, cost: _Optional[float] = ..., n_rows: _Optional[int] = ..., total_weight: _Optional[float] = ...) -> None: ...

class SampleByCostRequest(_message.Message):
    __slots__ = ("rows", "centers", "oversampling", "total_cost", "seed", "backend")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CENTERS_FIELD_NUMBER: _ClassVar[int]
    OVERSAMPLING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    rows: RowSource
    centers: _containers.RepeatedScalarFieldContainer[float]
    oversampling: float
    total_cost: float
    seed: int
    backend: Backend
    def __init__(self, rows: _Optional[_Union[RowSource, _Mapping]] = ..., centers: _Optional[_Iterable[float]] = ..., oversampling: _Optional[float] = ..., total_cost: _Optional[float] = ..., seed: _Optional[int] = ..., backend: _Optional[_Union[Backend, str]] = ...) -> None: ...

class SampleByCostResponse(_message.Message):
    __slots__ = ("values_f32le", "n_features", "n_rows")
    VALUES_F32LE_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_ROWS_FIELD_NUMBER: _ClassVar[int]
    values_f32le: bytes
    n_features: int
    n_rows: int
    def __init__(self, values_f32le: _Optional[bytes] = ..., n_features: _Optional[int] = ..., n_rows: _Optional[int] = ...) -> None: ...

class CandidateWeightsRequest(_message.Message):
    __slots__ = ("rows", "candidates", "backend")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    rows: RowSource
    candidates: _containers.RepeatedScalarFieldContainer[float]
    backend: Backend
    def __init__(self, rows: _Optional[_Union[RowSource, _Mapping]] = ..., candidates: _Optional[_Iterable[float]] = ..., backend: _Optional[_Union[Backend, str]] = ...) -> None: ...

class CandidateWeightsResponse(_message.Message):
    __slots__ = ("weights",)
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, weights: _Optional[_Iterable[float]] = ...) -> None: ...

class FitKMeansRequest(_message.Message):
    __slots__ = ("dataset_id", "k", "columns", "init", "initial_centroids", "n_init", "max_iter", "tol", "seed", "backend", "standardize", "weights_column", "init_sample_rows")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    N_INIT_FIELD_NUMBER: _ClassVar[int]
    MAX_ITER_FIELD_NUMBER: _ClassVar[int]
    TOL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    STANDARDIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_COLUMN_FIELD_NUMBER: _ClassVar[int]
    INIT_SAMPLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    k: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    init: InitMethod
    initial_centroids: _containers.RepeatedScalarFieldContainer[float]
    n_init: int
    max_iter: int
    tol: float
    seed: int
    backend: Backend
    standardize: bool
    weights_column: str
    init_sample_rows: int
    def __init__(self, dataset_id: _Optional[str] = ..., k: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., init: _Optional[_Union[InitMethod, str]] = ..., initial_centroids: _Optional[_Iterable[float]] = ..., n_init: _Optional[int] = ..., max_iter: _Optional[int] = ..., tol: _Optional[float] = ..., seed: _Optional[int] = ..., backend: _Optional[_Union[Backend, str]] = ..., standardize: _Optional[bool] = ..., weights_column: _Optional[str] = ..., init_sample_rows: _Optional[int] = ...) -> None: ...

class KMeansModel(_message.Message):
    __slots__ = ("id", "dataset_id", "k", "columns", "centroids", "inertia", "n_iter", "inertia_history", "cluster_sizes", "backend", "adapter", "standardized", "created_at", "converged", "segment_ids", "segment_descriptions")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    N_ITER_FIELD_NUMBER: _ClassVar[int]
    INERTIA_HISTORY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    STANDARDIZED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset_id: str
    k: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    centroids: _containers.RepeatedScalarFieldContainer[float]
    inertia: float
    n_iter: int
    inertia_history: _containers.RepeatedScalarFieldContainer[float]
    cluster_sizes: _containers.RepeatedScalarFieldContainer[int]
    backend: str
    adapter: str
    standardized: bool
    created_at: _timestamp_pb2.Timestamp
    converged: bool
    segment_ids: _containers.RepeatedScalarFieldContainer[int]
    segment_descriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., k: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., centroids: _Optional[_Iterable[float]] = ..., inertia: _Optional[float] = ..., n_iter: _Optional[int] = ..., inertia_history: _Optional[_Iterable[float]] = ..., cluster_sizes: _Optional[_Iterable[int]] = ..., backend: _Optional[str] = ..., adapter: _Optional[str] = ..., standardized: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., converged: _Optional[bool] = ..., segment_ids: _Optional[_Iterable[int]] = ..., segment_descriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignRequest(_message.Message):
    __slots__ = ("model_id", "rows", "n_features")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    rows: _containers.RepeatedScalarFieldContainer[float]
    n_features: int
    def __init__(self, model_id: _Optional[str] = ..., rows: _Optional[_Iterable[float]] = ..., n_features: _Optional[int] = ...) -> None: ...

class AssignResponse(_message.Message):
    __slots__ = ("labels", "distances", "margins", "segments")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    MARGINS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    distances: _containers.RepeatedScalarFieldContainer[float]
    margins: _containers.RepeatedScalarFieldContainer[float]
    segments: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, labels: _Optional[_Iterable[int]] = ..., distances: _Optional[_Iterable[float]] = ..., margins: _Optional[_Iterable[float]] = ..., segments: _Optional[_Iterable[int]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model_id", "dataset_id", "silhouette_sample_size", "seed")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    dataset_id: str
    silhouette_sample_size: int
    seed: int
    def __init__(self, model_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., silhouette_sample_size: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("inertia", "silhouette", "silhouette_sample_size", "davies_bouldin", "calinski_harabasz")
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DAVIES_BOULDIN_FIELD_NUMBER: _ClassVar[int]
    CALINSKI_HARABASZ_FIELD_NUMBER: _ClassVar[int]
    inertia: float
    silhouette: float
    silhouette_sample_size: int
    davies_bouldin: float
    calinski_harabasz: float
    def __init__(self, inertia: _Optional[float] = ..., silhouette: _Optional[float] = ..., silhouette_sample_size: _Optional[int] = ..., davies_bouldin: _Optional[float] = ..., calinski_harabasz: _Optional[float] = ...) -> None: ...

class FitPcaRequest(_message.Message):
    __slots__ = ("dataset_id", "n_components", "columns", "whiten", "backend")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    WHITEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    n_components: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    whiten: bool
    backend: Backend
    def __init__(self, dataset_id: _Optional[str] = ..., n_components: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., whiten: _Optional[bool] = ..., backend: _Optional[_Union[Backend, str]] = ...) -> None: ...

class PcaModel(_message.Message):
    __slots__ = ("id", "dataset_id", "n_components", "columns", "components", "explained_variance", "explained_variance_ratio", "singular_values", "mean", "whiten", "backend", "adapter", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINED_VARIANCE_RATIO_FIELD_NUMBER: _ClassVar[int]
    SINGULAR_VALUES_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    WHITEN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset_id: str
    n_components: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    components: _containers.RepeatedScalarFieldContainer[float]
    explained_variance: _containers.RepeatedScalarFieldContainer[float]
    explained_variance_ratio: _containers.RepeatedScalarFieldContainer[float]
    singular_values: _containers.RepeatedScalarFieldContainer[float]
    mean: _containers.RepeatedScalarFieldContainer[float]
    whiten: bool
    backend: str
    adapter: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., n_components: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., components: _Optional[_Iterable[float]] = ..., explained_variance: _Optional[_Iterable[float]] = ..., explained_variance_ratio: _Optional[_Iterable[float]] = ..., singular_values: _Optional[_Iterable[float]] = ..., mean: _Optional[_Iterable[float]] = ..., whiten: _Optional[bool] = ..., backend: _Optional[str] = ..., adapter: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TransformRequest(_message.Message):
    __slots__ = ("model_id", "rows", "n_features")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    rows: _containers.RepeatedScalarFieldContainer[float]
    n_features: int
    def __init__(self, model_id: _Optional[str] = ..., rows: _Optional[_Iterable[float]] = ..., n_features: _Optional[int] = ...) -> None: ...

class TransformResponse(_message.Message):
    __slots__ = ("n_components", "values")
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    n_components: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, n_components: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class InverseTransformRequest(_message.Message):
    __slots__ = ("model_id", "values", "n_components")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    values: _containers.RepeatedScalarFieldContainer[float]
    n_components: int
    def __init__(self, model_id: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ..., n_components: _Optional[int] = ...) -> None: ...

class InverseTransformResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, rows: _Optional[_Iterable[float]] = ...) -> None: ...

class DeleteTransactionsRequest(_message.Message):
    __slots__ = ("id", "cascade")
    ID_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    id: str
    cascade: bool
    def __init__(self, id: _Optional[str] = ..., cascade: _Optional[bool] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[TransactionLog]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[TransactionLog, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteSegmentationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UploadTransactionsRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: TransactionsHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[TransactionsHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class TransactionsHeader(_message.Message):
    __slots__ = ("name", "format", "text_format", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: FileFormat
    text_format: TextFormat
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[FileFormat, str]] = ..., text_format: _Optional[_Union[TextFormat, _Mapping]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class TransactionLog(_message.Message):
    __slots__ = ("id", "name", "format", "size_bytes", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    format: FileFormat
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., format: _Optional[_Union[FileFormat, str]] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TransactionColumns(_message.Message):
    __slots__ = ("customer", "date", "amount", "quantity", "order")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    customer: str
    date: str
    amount: str
    quantity: str
    order: str
    def __init__(self, customer: _Optional[str] = ..., date: _Optional[str] = ..., amount: _Optional[str] = ..., quantity: _Optional[str] = ..., order: _Optional[str] = ...) -> None: ...

class KRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: int
    max: int
    def __init__(self, min: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("transactions_id", "transactions_path", "columns", "k", "k_range", "as_of", "previous_segmentation_id", "bad_rows", "outlier_percentile", "seed", "n_init", "backend", "text_format", "max_bad_rows", "features", "min_share", "value", "experiment")
    TRANSACTIONS_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_PATH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    K_RANGE_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SEGMENTATION_ID_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    N_INIT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MAX_BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    transactions_id: str
    transactions_path: str
    columns: TransactionColumns
    k: int
    k_range: KRange
    as_of: str
    previous_segmentation_id: str
    bad_rows: BadRowPolicy
    outlier_percentile: float
    seed: int
    n_init: int
    backend: Backend
    text_format: TextFormat
    max_bad_rows: float
    features: _containers.RepeatedScalarFieldContainer[str]
    min_share: float
    value: ValueOptions
    experiment: ExperimentOptions
    def __init__(self, transactions_id: _Optional[str] = ..., transactions_path: _Optional[str] = ..., columns: _Optional[_Union[TransactionColumns, _Mapping]] = ..., k: _Optional[int] = ..., k_range: _Optional[_Union[KRange, _Mapping]] = ..., as_of: _Optional[str] = ..., previous_segmentation_id: _Optional[str] = ..., bad_rows: _Optional[_Union[BadRowPolicy, str]] = ..., outlier_percentile: _Optional[float] = ..., seed: _Optional[int] = ..., n_init: _Optional[int] = ..., backend: _Optional[_Union[Backend, str]] = ..., text_format: _Optional[_Union[TextFormat, _Mapping]] = ..., max_bad_rows: _Optional[float] = ..., features: _Optional[_Iterable[str]] = ..., min_share: _Optional[float] = ..., value: _Optional[_Union[ValueOptions, _Mapping]] = ..., experiment: _Optional[_Union[ExperimentOptions, _Mapping]] = ...) -> None: ...

class ValueOptions(_message.Message):
    __slots__ = ("enabled", "time_unit", "horizon", "discount_rate", "churn_high", "churn_medium")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_RATE_FIELD_NUMBER: _ClassVar[int]
    CHURN_HIGH_FIELD_NUMBER: _ClassVar[int]
    CHURN_MEDIUM_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    time_unit: TimeUnit
    horizon: int
    discount_rate: float
    churn_high: float
    churn_medium: float
    def __init__(self, enabled: _Optional[bool] = ..., time_unit: _Optional[_Union[TimeUnit, str]] = ..., horizon: _Optional[int] = ..., discount_rate: _Optional[float] = ..., churn_high: _Optional[float] = ..., churn_medium: _Optional[float] = ...) -> None: ...

class ExperimentOptions(_message.Message):
    __slots__ = ("holdout_share", "salt")
    HOLDOUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    holdout_share: float
    salt: str
    def __init__(self, holdout_share: _Optional[float] = ..., salt: _Optional[str] = ...) -> None: ...

class SegmentValue(_message.Message):
    __slots__ = ("mean_clv", "total_clv", "value_share", "mean_p_alive", "high_churn_risk")
    MEAN_CLV_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CLV_FIELD_NUMBER: _ClassVar[int]
    VALUE_SHARE_FIELD_NUMBER: _ClassVar[int]
    MEAN_P_ALIVE_FIELD_NUMBER: _ClassVar[int]
    HIGH_CHURN_RISK_FIELD_NUMBER: _ClassVar[int]
    mean_clv: float
    total_clv: float
    value_share: float
    mean_p_alive: float
    high_churn_risk: int
    def __init__(self, mean_clv: _Optional[float] = ..., total_clv: _Optional[float] = ..., value_share: _Optional[float] = ..., mean_p_alive: _Optional[float] = ..., high_churn_risk: _Optional[int] = ...) -> None: ...

class GetSegmentationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ClvRequest(_message.Message):
    __slots__ = ("transactions_id", "transactions_path", "columns", "calibration_end", "holdout_end", "value", "bad_rows", "max_bad_rows", "text_format")
    TRANSACTIONS_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_PATH_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_END_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_END_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    transactions_id: str
    transactions_path: str
    columns: TransactionColumns
    calibration_end: str
    holdout_end: str
    value: ValueOptions
    bad_rows: BadRowPolicy
    max_bad_rows: float
    text_format: TextFormat
    def __init__(self, transactions_id: _Optional[str] = ..., transactions_path: _Optional[str] = ..., columns: _Optional[_Union[TransactionColumns, _Mapping]] = ..., calibration_end: _Optional[str] = ..., holdout_end: _Optional[str] = ..., value: _Optional[_Union[ValueOptions, _Mapping]] = ..., bad_rows: _Optional[_Union[BadRowPolicy, str]] = ..., max_bad_rows: _Optional[float] = ..., text_format: _Optional[_Union[TextFormat, _Mapping]] = ...) -> None: ...

class GetClvRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class FitDiagnostics(_message.Message):
    __slots__ = ("log_likelihood", "iterations", "gradient_norm", "converged")
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    log_likelihood: float
    iterations: int
    gradient_norm: float
    converged: bool
    def __init__(self, log_likelihood: _Optional[float] = ..., iterations: _Optional[int] = ..., gradient_norm: _Optional[float] = ..., converged: _Optional[bool] = ...) -> None: ...

class BgNbdFit(_message.Message):
    __slots__ = ("r", "alpha", "a", "b", "r_std_error", "alpha_std_error", "a_std_error", "b_std_error", "fit")
    R_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    R_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    ALPHA_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    A_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    B_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    r: float
    alpha: float
    a: float
    b: float
    r_std_error: float
    alpha_std_error: float
    a_std_error: float
    b_std_error: float
    fit: FitDiagnostics
    def __init__(self, r: _Optional[float] = ..., alpha: _Optional[float] = ..., a: _Optional[float] = ..., b: _Optional[float] = ..., r_std_error: _Optional[float] = ..., alpha_std_error: _Optional[float] = ..., a_std_error: _Optional[float] = ..., b_std_error: _Optional[float] = ..., fit: _Optional[_Union[FitDiagnostics, _Mapping]] = ...) -> None: ...

class GammaGammaFit(_message.Message):
    __slots__ = ("p", "q", "v", "p_std_error", "q_std_error", "v_std_error", "fit", "frequency_spend_correlation", "customers_fitted", "excluded_non_positive_spend", "p_at_limit")
    P_FIELD_NUMBER: _ClassVar[int]
    Q_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    P_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    Q_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    V_STD_ERROR_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_SPEND_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FITTED_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_NON_POSITIVE_SPEND_FIELD_NUMBER: _ClassVar[int]
    P_AT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    p: float
    q: float
    v: float
    p_std_error: float
    q_std_error: float
    v_std_error: float
    fit: FitDiagnostics
    frequency_spend_correlation: float
    customers_fitted: int
    excluded_non_positive_spend: int
    p_at_limit: bool
    def __init__(self, p: _Optional[float] = ..., q: _Optional[float] = ..., v: _Optional[float] = ..., p_std_error: _Optional[float] = ..., q_std_error: _Optional[float] = ..., v_std_error: _Optional[float] = ..., fit: _Optional[_Union[FitDiagnostics, _Mapping]] = ..., frequency_spend_correlation: _Optional[float] = ..., customers_fitted: _Optional[int] = ..., excluded_non_positive_spend: _Optional[int] = ..., p_at_limit: _Optional[bool] = ...) -> None: ...

class HoldoutBucket(_message.Message):
    __slots__ = ("repeat_purchases", "customers", "mean_predicted", "mean_actual")
    REPEAT_PURCHASES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    MEAN_ACTUAL_FIELD_NUMBER: _ClassVar[int]
    repeat_purchases: str
    customers: int
    mean_predicted: float
    mean_actual: float
    def __init__(self, repeat_purchases: _Optional[str] = ..., customers: _Optional[int] = ..., mean_predicted: _Optional[float] = ..., mean_actual: _Optional[float] = ...) -> None: ...

class HoldoutCheck(_message.Message):
    __slots__ = ("holdout_end", "length", "by_repeat_purchases", "mae", "total_predicted", "total_actual")
    HOLDOUT_END_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BY_REPEAT_PURCHASES_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PREDICTED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ACTUAL_FIELD_NUMBER: _ClassVar[int]
    holdout_end: str
    length: float
    by_repeat_purchases: _containers.RepeatedCompositeFieldContainer[HoldoutBucket]
    mae: float
    total_predicted: float
    total_actual: int
    def __init__(self, holdout_end: _Optional[str] = ..., length: _Optional[float] = ..., by_repeat_purchases: _Optional[_Iterable[_Union[HoldoutBucket, _Mapping]]] = ..., mae: _Optional[float] = ..., total_predicted: _Optional[float] = ..., total_actual: _Optional[int] = ...) -> None: ...

class ClvRun(_message.Message):
    __slots__ = ("id", "calibration_end", "time_unit", "horizon", "discount_rate", "churn_high", "churn_medium", "n_customers", "n_repeat_customers", "bgnbd", "gamma_gamma", "expected_purchases_new_customer", "total_clv", "holdout", "rows_read", "bad_rows", "bad_rows_by_problem", "warnings", "artifacts", "created_at")
    class BadRowsByProblemEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_END_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_RATE_FIELD_NUMBER: _ClassVar[int]
    CHURN_HIGH_FIELD_NUMBER: _ClassVar[int]
    CHURN_MEDIUM_FIELD_NUMBER: _ClassVar[int]
    N_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    N_REPEAT_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    BGNBD_FIELD_NUMBER: _ClassVar[int]
    GAMMA_GAMMA_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_PURCHASES_NEW_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CLV_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_BY_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    calibration_end: str
    time_unit: TimeUnit
    horizon: int
    discount_rate: float
    churn_high: float
    churn_medium: float
    n_customers: int
    n_repeat_customers: int
    bgnbd: BgNbdFit
    gamma_gamma: GammaGammaFit
    expected_purchases_new_customer: float
    total_clv: float
    holdout: HoldoutCheck
    rows_read: int
    bad_rows: int
    bad_rows_by_problem: _containers.ScalarMap[str, int]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., calibration_end: _Optional[str] = ..., time_unit: _Optional[_Union[TimeUnit, str]] = ..., horizon: _Optional[int] = ..., discount_rate: _Optional[float] = ..., churn_high: _Optional[float] = ..., churn_medium: _Optional[float] = ..., n_customers: _Optional[int] = ..., n_repeat_customers: _Optional[int] = ..., bgnbd: _Optional[_Union[BgNbdFit, _Mapping]] = ..., gamma_gamma: _Optional[_Union[GammaGammaFit, _Mapping]] = ..., expected_purchases_new_customer: _Optional[float] = ..., total_clv: _Optional[float] = ..., holdout: _Optional[_Union[HoldoutCheck, _Mapping]] = ..., rows_read: _Optional[int] = ..., bad_rows: _Optional[int] = ..., bad_rows_by_problem: _Optional[_Mapping[str, int]] = ..., warnings: _Optional[_Iterable[str]] = ..., artifacts: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpliftRequest(_message.Message):
    __slots__ = ("header", "outcomes")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    header: UpliftHeader
    outcomes: OutcomeBlock
    def __init__(self, header: _Optional[_Union[UpliftHeader, _Mapping]] = ..., outcomes: _Optional[_Union[OutcomeBlock, _Mapping]] = ...) -> None: ...

class UpliftHeader(_message.Message):
    __slots__ = ("segmentation_id",)
    SEGMENTATION_ID_FIELD_NUMBER: _ClassVar[int]
    segmentation_id: str
    def __init__(self, segmentation_id: _Optional[str] = ...) -> None: ...

class OutcomeBlock(_message.Message):
    __slots__ = ("customer_ids", "converted", "revenue")
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    converted: _containers.RepeatedScalarFieldContainer[bool]
    revenue: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ..., converted: _Optional[_Iterable[bool]] = ..., revenue: _Optional[_Iterable[float]] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("estimate", "low", "high")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    estimate: float
    low: float
    high: float
    def __init__(self, estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class Arm(_message.Message):
    __slots__ = ("customers", "conversions", "conversion_rate", "revenue_per_customer", "revenue_sd")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_PER_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    REVENUE_SD_FIELD_NUMBER: _ClassVar[int]
    customers: int
    conversions: int
    conversion_rate: float
    revenue_per_customer: float
    revenue_sd: float
    def __init__(self, customers: _Optional[int] = ..., conversions: _Optional[int] = ..., conversion_rate: _Optional[float] = ..., revenue_per_customer: _Optional[float] = ..., revenue_sd: _Optional[float] = ...) -> None: ...

class Uplift(_message.Message):
    __slots__ = ("stratum", "treatment", "control", "conversion", "conversion_relative", "conversion_p_value", "revenue", "revenue_relative", "revenue_p_value", "warning")
    STRATUM_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RELATIVE_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_RELATIVE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    stratum: str
    treatment: Arm
    control: Arm
    conversion: Interval
    conversion_relative: Interval
    conversion_p_value: float
    revenue: Interval
    revenue_relative: Interval
    revenue_p_value: float
    warning: str
    def __init__(self, stratum: _Optional[str] = ..., treatment: _Optional[_Union[Arm, _Mapping]] = ..., control: _Optional[_Union[Arm, _Mapping]] = ..., conversion: _Optional[_Union[Interval, _Mapping]] = ..., conversion_relative: _Optional[_Union[Interval, _Mapping]] = ..., conversion_p_value: _Optional[float] = ..., revenue: _Optional[_Union[Interval, _Mapping]] = ..., revenue_relative: _Optional[_Union[Interval, _Mapping]] = ..., revenue_p_value: _Optional[float] = ..., warning: _Optional[str] = ...) -> None: ...

class UpliftReport(_message.Message):
    __slots__ = ("overall", "segments", "customers", "without_outcome", "unknown_outcomes", "warnings")
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    overall: Uplift
    segments: _containers.RepeatedCompositeFieldContainer[Uplift]
    customers: int
    without_outcome: int
    unknown_outcomes: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, overall: _Optional[_Union[Uplift, _Mapping]] = ..., segments: _Optional[_Iterable[_Union[Uplift, _Mapping]]] = ..., customers: _Optional[int] = ..., without_outcome: _Optional[int] = ..., unknown_outcomes: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("segmentation_id", "name")
    SEGMENTATION_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    segmentation_id: str
    name: str
    def __init__(self, segmentation_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class FeatureProfile(_message.Message):
    __slots__ = ("feature", "mean", "median", "lift")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    mean: float
    median: float
    lift: float
    def __init__(self, feature: _Optional[str] = ..., mean: _Optional[float] = ..., median: _Optional[float] = ..., lift: _Optional[float] = ...) -> None: ...

class RfmCount(_message.Message):
    __slots__ = ("rfm_segment", "customers")
    RFM_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    rfm_segment: str
    customers: int
    def __init__(self, rfm_segment: _Optional[str] = ..., customers: _Optional[int] = ...) -> None: ...

class SegmentProfile(_message.Message):
    __slots__ = ("id", "size", "share", "description", "features", "top_rfm_segments", "outlier_threshold", "outliers", "mean_margin", "value", "control")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOP_RFM_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MARGIN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    id: int
    size: int
    share: float
    description: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureProfile]
    top_rfm_segments: _containers.RepeatedCompositeFieldContainer[RfmCount]
    outlier_threshold: float
    outliers: int
    mean_margin: float
    value: SegmentValue
    control: int
    def __init__(self, id: _Optional[int] = ..., size: _Optional[int] = ..., share: _Optional[float] = ..., description: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureProfile, _Mapping]]] = ..., top_rfm_segments: _Optional[_Iterable[_Union[RfmCount, _Mapping]]] = ..., outlier_threshold: _Optional[float] = ..., outliers: _Optional[int] = ..., mean_margin: _Optional[float] = ..., value: _Optional[_Union[SegmentValue, _Mapping]] = ..., control: _Optional[int] = ...) -> None: ...

class KScore(_message.Message):
    __slots__ = ("k", "inertia", "silhouette", "davies_bouldin", "calinski_harabasz", "min_share", "stability", "eligible")
    K_FIELD_NUMBER: _ClassVar[int]
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_FIELD_NUMBER: _ClassVar[int]
    DAVIES_BOULDIN_FIELD_NUMBER: _ClassVar[int]
    CALINSKI_HARABASZ_FIELD_NUMBER: _ClassVar[int]
    MIN_SHARE_FIELD_NUMBER: _ClassVar[int]
    STABILITY_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    k: int
    inertia: float
    silhouette: float
    davies_bouldin: float
    calinski_harabasz: float
    min_share: float
    stability: float
    eligible: bool
    def __init__(self, k: _Optional[int] = ..., inertia: _Optional[float] = ..., silhouette: _Optional[float] = ..., davies_bouldin: _Optional[float] = ..., calinski_harabasz: _Optional[float] = ..., min_share: _Optional[float] = ..., stability: _Optional[float] = ..., eligible: _Optional[bool] = ...) -> None: ...

class KSweep(_message.Message):
    __slots__ = ("scores", "recommended_k", "rule", "reason")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_K_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[KScore]
    recommended_k: int
    rule: str
    reason: str
    def __init__(self, scores: _Optional[_Iterable[_Union[KScore, _Mapping]]] = ..., recommended_k: _Optional[int] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TransitionRow(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, counts: _Optional[_Iterable[int]] = ...) -> None: ...

class SizeDrift(_message.Message):
    __slots__ = ("segment", "previous_size", "size", "previous_share", "share")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    segment: int
    previous_size: int
    size: int
    previous_share: float
    share: float
    def __init__(self, segment: _Optional[int] = ..., previous_size: _Optional[int] = ..., size: _Optional[int] = ..., previous_share: _Optional[float] = ..., share: _Optional[float] = ...) -> None: ...

class Refresh(_message.Message):
    __slots__ = ("previous_as_of", "rows", "arrived", "left", "size_drift", "stayed_fraction", "previous_segment_ids", "segment_ids", "summary")
    PREVIOUS_AS_OF_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    SIZE_DRIFT_FIELD_NUMBER: _ClassVar[int]
    STAYED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    previous_as_of: str
    rows: _containers.RepeatedCompositeFieldContainer[TransitionRow]
    arrived: _containers.RepeatedScalarFieldContainer[int]
    left: _containers.RepeatedScalarFieldContainer[int]
    size_drift: _containers.RepeatedCompositeFieldContainer[SizeDrift]
    stayed_fraction: float
    previous_segment_ids: _containers.RepeatedScalarFieldContainer[int]
    segment_ids: _containers.RepeatedScalarFieldContainer[int]
    summary: str
    def __init__(self, previous_as_of: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[TransitionRow, _Mapping]]] = ..., arrived: _Optional[_Iterable[int]] = ..., left: _Optional[_Iterable[int]] = ..., size_drift: _Optional[_Iterable[_Union[SizeDrift, _Mapping]]] = ..., stayed_fraction: _Optional[float] = ..., previous_segment_ids: _Optional[_Iterable[int]] = ..., segment_ids: _Optional[_Iterable[int]] = ..., summary: _Optional[str] = ...) -> None: ...

class InputSummary(_message.Message):
    __slots__ = ("rows_read", "bad_rows", "bad_rows_by_problem", "lines_after_as_of", "refund_lines", "customers_without_purchase", "frequency_basis", "delimiter", "date_format", "lines_after_today", "latest_future_date")
    class BadRowsByProblemEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROWS_READ_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    BAD_ROWS_BY_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    LINES_AFTER_AS_OF_FIELD_NUMBER: _ClassVar[int]
    REFUND_LINES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_WITHOUT_PURCHASE_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_BASIS_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    DATE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LINES_AFTER_TODAY_FIELD_NUMBER: _ClassVar[int]
    LATEST_FUTURE_DATE_FIELD_NUMBER: _ClassVar[int]
    rows_read: int
    bad_rows: int
    bad_rows_by_problem: _containers.ScalarMap[str, int]
    lines_after_as_of: int
    refund_lines: int
    customers_without_purchase: int
    frequency_basis: str
    delimiter: str
    date_format: str
    lines_after_today: int
    latest_future_date: str
    def __init__(self, rows_read: _Optional[int] = ..., bad_rows: _Optional[int] = ..., bad_rows_by_problem: _Optional[_Mapping[str, int]] = ..., lines_after_as_of: _Optional[int] = ..., refund_lines: _Optional[int] = ..., customers_without_purchase: _Optional[int] = ..., frequency_basis: _Optional[str] = ..., delimiter: _Optional[str] = ..., date_format: _Optional[str] = ..., lines_after_today: _Optional[int] = ..., latest_future_date: _Optional[str] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("id", "as_of", "k", "n_customers", "features", "log1p", "segments", "k_sweep", "refresh", "input", "artifacts", "backend", "adapter", "created_at", "features_left_out", "value_unavailable")
    ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    N_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LOG1P_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    K_SWEEP_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    VALUE_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    id: str
    as_of: str
    k: int
    n_customers: int
    features: _containers.RepeatedScalarFieldContainer[str]
    log1p: _containers.RepeatedScalarFieldContainer[bool]
    segments: _containers.RepeatedCompositeFieldContainer[SegmentProfile]
    k_sweep: KSweep
    refresh: Refresh
    input: InputSummary
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    adapter: str
    created_at: _timestamp_pb2.Timestamp
    features_left_out: _containers.RepeatedScalarFieldContainer[str]
    value_unavailable: str
    def __init__(self, id: _Optional[str] = ..., as_of: _Optional[str] = ..., k: _Optional[int] = ..., n_customers: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., log1p: _Optional[_Iterable[bool]] = ..., segments: _Optional[_Iterable[_Union[SegmentProfile, _Mapping]]] = ..., k_sweep: _Optional[_Union[KSweep, _Mapping]] = ..., refresh: _Optional[_Union[Refresh, _Mapping]] = ..., input: _Optional[_Union[InputSummary, _Mapping]] = ..., artifacts: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., adapter: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., features_left_out: _Optional[_Iterable[str]] = ..., value_unavailable: _Optional[str] = ...) -> None: ...

class CreateKMeansRequest(_message.Message):
    __slots__ = ("columns", "k", "centroids", "inertia", "n_iter", "converged", "inertia_history", "cluster_sizes")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CENTROIDS_FIELD_NUMBER: _ClassVar[int]
    INERTIA_FIELD_NUMBER: _ClassVar[int]
    N_ITER_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    INERTIA_HISTORY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_SIZES_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    k: int
    centroids: _containers.RepeatedScalarFieldContainer[float]
    inertia: float
    n_iter: int
    converged: bool
    inertia_history: _containers.RepeatedScalarFieldContainer[float]
    cluster_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., centroids: _Optional[_Iterable[float]] = ..., inertia: _Optional[float] = ..., n_iter: _Optional[int] = ..., converged: _Optional[bool] = ..., inertia_history: _Optional[_Iterable[float]] = ..., cluster_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class ImportModelRequest(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("kmeans", "pca")
    KMEANS_FIELD_NUMBER: _ClassVar[int]
    PCA_FIELD_NUMBER: _ClassVar[int]
    kmeans: KMeansModel
    pca: PcaModel
    def __init__(self, kmeans: _Optional[_Union[KMeansModel, _Mapping]] = ..., pca: _Optional[_Union[PcaModel, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_dataset_bytes", "max_concurrent_jobs", "max_assign_rows", "max_data_dir_bytes", "max_features", "max_k", "max_iterations", "max_fit_work", "max_silhouette_sample", "max_queued_jobs", "max_concurrent_requests", "max_concurrent_uploads", "max_streams_per_connection", "max_name_bytes", "request_timeout_seconds", "idle_timeout_seconds", "job_retention_seconds", "max_retained_jobs", "max_connections", "handshake_timeout_seconds", "max_partition_cache_bytes", "partition_ttl_seconds", "max_connections_per_peer")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_ASSIGN_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_DATA_DIR_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_FIT_WORK_FIELD_NUMBER: _ClassVar[int]
    MAX_SILHOUETTE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_PER_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_NAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JOB_RETENTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETAINED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    HANDSHAKE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTITION_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTIONS_PER_PEER_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_dataset_bytes: int
    max_concurrent_jobs: int
    max_assign_rows: int
    max_data_dir_bytes: int
    max_features: int
    max_k: int
    max_iterations: int
    max_fit_work: float
    max_silhouette_sample: int
    max_queued_jobs: int
    max_concurrent_requests: int
    max_concurrent_uploads: int
    max_streams_per_connection: int
    max_name_bytes: int
    request_timeout_seconds: float
    idle_timeout_seconds: float
    job_retention_seconds: float
    max_retained_jobs: int
    max_connections: int
    handshake_timeout_seconds: float
    max_partition_cache_bytes: int
    partition_ttl_seconds: float
    max_connections_per_peer: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_dataset_bytes: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ..., max_assign_rows: _Optional[int] = ..., max_data_dir_bytes: _Optional[int] = ..., max_features: _Optional[int] = ..., max_k: _Optional[int] = ..., max_iterations: _Optional[int] = ..., max_fit_work: _Optional[float] = ..., max_silhouette_sample: _Optional[int] = ..., max_queued_jobs: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., max_concurrent_uploads: _Optional[int] = ..., max_streams_per_connection: _Optional[int] = ..., max_name_bytes: _Optional[int] = ..., request_timeout_seconds: _Optional[float] = ..., idle_timeout_seconds: _Optional[float] = ..., job_retention_seconds: _Optional[float] = ..., max_retained_jobs: _Optional[int] = ..., max_connections: _Optional[int] = ..., handshake_timeout_seconds: _Optional[float] = ..., max_partition_cache_bytes: _Optional[int] = ..., partition_ttl_seconds: _Optional[float] = ..., max_connections_per_peer: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "backends", "gpu_adapters", "default_backend", "default_adapter", "limits", "auth_required", "tls", "server_paths", "client_certificates")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    GPU_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    SERVER_PATHS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    version: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    gpu_adapters: _containers.RepeatedScalarFieldContainer[str]
    default_backend: str
    default_adapter: str
    limits: Limits
    auth_required: bool
    tls: bool
    server_paths: bool
    client_certificates: bool
    def __init__(self, version: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., gpu_adapters: _Optional[_Iterable[str]] = ..., default_backend: _Optional[str] = ..., default_adapter: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., auth_required: _Optional[bool] = ..., tls: _Optional[bool] = ..., server_paths: _Optional[bool] = ..., client_certificates: _Optional[bool] = ...) -> None: ...

class EraseCustomerRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class ErasedObject(_message.Message):
    __slots__ = ("kind", "id", "rows_removed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    rows_removed: int
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., rows_removed: _Optional[int] = ...) -> None: ...

class EraseCustomerResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: _containers.RepeatedCompositeFieldContainer[ErasedObject]
    def __init__(self, changed: _Optional[_Iterable[_Union[ErasedObject, _Mapping]]] = ...) -> None: ...
