"""refine core: contracts, registry, config and engines. Model-, robot- and vendor-agnostic."""
from __future__ import annotations

__version__ = "0.1.0"

from .codec import ActionCodec, ActionDecodeError
from .episode import ACTION_DIM, Episode, Step
from .errors import RefineError, UnknownComponent, UsageError
from .hookspecs import hookimpl
from .plugins import get_registry
from .reasoning import Reasoning, TaskPlanning
from .specs import ActionCodecSpec, BackboneSpec, BenchmarkSpec, DatasetSpec, NoOptions, TeacherSpec
from .dataset import RobotDataset
from .stats import DatasetStatistics, Statistics
from .teacher import Annotation, AnnotationRequest, BatchStatus, BatchTeacher, Teacher, TeacherIdentity, TokenUsage

__all__ = [
    "ACTION_DIM", "ActionCodec", "ActionCodecSpec", "ActionDecodeError",
    "Annotation", "AnnotationRequest", "BackboneSpec", "BatchStatus", "BatchTeacher",
    "BenchmarkSpec", "DatasetSpec", "DatasetStatistics", "Episode", "NoOptions", "Reasoning",
    "RefineError", "RobotDataset", "Statistics", "Step", "TaskPlanning", "Teacher",
    "TeacherIdentity", "TeacherSpec", "TokenUsage", "UnknownComponent", "UsageError",
    "__version__", "get_registry", "hookimpl",
]
