"""refine core: the public plugin API, the registry, the config and the engines.

Everything a plugin implements or receives is importable from here (`from refine_core import
Backbone`); built-in plugins and third-party ones use nothing else of the core, and a test
holds them to it. Names load on first use, so `import refine_core` stays light (no torch).

Registering components (see README "Writing a plugin")
    hookimpl, BackboneSpec, ActionCodecSpec, TeacherSpec, DatasetSpec, BenchmarkSpec, NoOptions,
    get_registry (build another registered component, e.g. a codec a backbone relies on)
Errors (the CLI maps them to exit codes)
    RefineError (1: failed while working), UsageError (2: bad usage or input, one line),
    UnknownComponent, MissingExtra
Data: what datasets yield and every stage consumes
    Episode, Step, ACTION_DIM, GRIPPER, Reasoning, TaskPlanning, Statistics, DatasetStatistics,
    RobotDataset; for dataset authors: StatisticsAccumulator, cached_statistics, cache_dir
The VLM2VLA plan: a trajectory decomposed into subtasks, each with its share of the action log
    PlanStep, TrajectoryPlan, TrajectoryRequest (what a decomposing teacher sees), AXIS_CONVENTIONS,
    validate_plan (concatenated actions against the log), PlanMismatch
Teachers
    Teacher, TeacherIdentity, AnnotationRequest, Annotation, TokenUsage, Price, BatchTeacher,
    BatchStatus, TeacherError, TransientTeacherError, PermanentTeacherError, MalformedAnswer;
    refine's teacher prompt: PROMPT_VERSION, build_prompt, TeacherAnswer, answer_json_schema,
    reasoning_from_answer; motion analysis of an episode: motion_phases, gripper_open,
    current_sub_actions
Action codecs
    ActionCodec, CodecOptions, ActionDecodeError, TokenizerLike, default_action_mask
Backbones, and the toolkit a backbone author builds with
    Backbone, BackboneOptions, Decoder, TrainingSample, Prediction, AllowedIds, StopRow, model_dtype;
    greedy_decode, left_padded, choose_decoder, static_decoder (KV-cached and CUDA-graph decoding),
    cache_kwargs, returned_cache (the KV cache under transformers' name of the version installed);
    read_state_dict, write_state_dict, read_tokenizer, resolve_checkpoint_dir (safetensors
    checkpoint directories, Hub ids); to_pixel_values; PaliGemmaPrompt
Training objective
    reasoning_aware_loss, LossOutput
Benchmarks
    Benchmark, EvalContext, BenchmarkResult, SampleStream, episode_samples, get_reasoning_format
    (a reasoning training format: its `opening`, render, parse); free-running reasoning against
    the teacher's, per section: compare_reasoning, summarise_reasoning; closed loop through
    vla-eval: ClosedLoopBenchmark (subclass it naming a vla-eval benchmark), ClosedLoopOptions,
    ClosedLoopMode, wilson_interval, ScriptedPolicy (a reference policy acting through the same server)
Acting (closed loop)
    Policy, PolicySettings, PolicySession, ActionChunk, ReasoningMode (every_step, every_k, never);
    HierarchicalPolicy, HierarchicalPolicySettings (VLM2VLA: subtasks, then plan → chunk → verifier)
Files
    atomic_write (a file a reader sees whole or not at all; durable before it counts)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {}
for _module, _names in {
    "refine_core.hookspecs": "hookimpl",
    "refine_core.specs": "ActionCodecSpec BackboneSpec BenchmarkSpec DatasetSpec NoOptions TeacherSpec",
    "refine_core.registry": "get_registry",
    "refine_core.errors": "MissingExtra RefineError UnknownComponent UsageError",
    "refine_core.episode": "ACTION_DIM GRIPPER Episode Step",
    "refine_core.reasoning": "Reasoning TaskPlanning",
    "refine_core.plan": "AXIS_CONVENTIONS PlanMismatch PlanStep TrajectoryPlan TrajectoryRequest "
                        "validate_plan",
    "refine_core.statistics": "DatasetStatistics Statistics StatisticsAccumulator cached_statistics",
    "refine_core.files": "atomic_write cache_dir",
    "refine_core.dataset": "RobotDataset",
    "refine_core.teacher": "Annotation AnnotationRequest BatchStatus BatchTeacher MalformedAnswer "
    "PermanentTeacherError Price Teacher TeacherError TeacherIdentity TokenUsage "
    "TransientTeacherError",
    "refine_core.annotate.prompt": "PROMPT_VERSION TeacherAnswer answer_json_schema build_prompt "
    "reasoning_from_answer",
    "refine_core.annotate.motion": "gripper_open motion_phases",
    "refine_core.annotate.strategy": "current_sub_actions",
    "refine_core.action_codec": "ActionCodec ActionDecodeError CodecOptions TokenizerLike "
                                "default_action_mask",
    "refine_core.backbone": "AllowedIds Backbone BackboneOptions Decoder Prediction StopRow TrainingSample "
                            "model_dtype",
    "refine_core.toolkit.decoding": "cache_kwargs choose_decoder greedy_decode left_padded returned_cache "
                                    "static_decoder",
    "refine_core.toolkit.weights": "read_state_dict read_tokenizer resolve_checkpoint_dir write_state_dict",
    "refine_core.toolkit.images": "to_pixel_values",
    "refine_core.toolkit.prompts": "PaliGemmaPrompt",
    "refine_core.loss": "LossOutput reasoning_aware_loss",
    "refine_core.benchmark": "Benchmark BenchmarkResult EvalContext",
    "refine_core.data.samples": "SampleStream episode_samples",
    "refine_core.data.reasoning_formats": "get_reasoning_format",
    "refine_core.policy": "ActionChunk Policy PolicySession PolicySettings ReasoningMode",
    "refine_core.vlm2vla_policy": "HierarchicalPolicy HierarchicalPolicySettings",
    "refine_core.evaluate.closed_loop": ("ClosedLoopBenchmark ClosedLoopMode ClosedLoopOptions "
                                         "wilson_interval"),
    "refine_core.evaluate.baselines": "ScriptedPolicy",
    "refine_core.evaluate.reasoning_quality": "compare_reasoning summarise_reasoning",
}.items():
    for _name in _names.split():
        _EXPORTS[_name] = _module

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refine_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
