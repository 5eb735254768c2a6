"""Registration: one function per hook, each yielding spec records.

Keep this module import-light: refine imports it for every command (even `refine --help`),
so heavy libraries belong in the modules the factories point at.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import ActionCodecSpec, BenchmarkSpec, CodecOptions, DatasetSpec, TeacherSpec, hookimpl


class FixedTeacherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sub_action: str = Field("move toward the target", description="The sub-action every answer ends with.")


class LineDatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    episodes: int = Field(2, ge=1, description="Number of episodes.")
    steps: int = Field(5, ge=2, description="Steps per episode.")
    image_size: int = Field(32, ge=8, description="Square frame size in pixels.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="template-fixed",
        summary="Template: answers every step with the same reasoning (offline)",
        factory="refine_plugin_template.components:FixedTeacher",
        options=FixedTeacherOptions,
    )


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="template-line",
        summary="Template: a gripper sliding along a line, generated in memory",
        factory="refine_plugin_template.components:LineDataset",
        options=LineDatasetOptions,
    )


@hookimpl
def refine_commands(app):
    @app.command("template-reasoning")
    def template_reasoning(sub_action: str = "move toward the target") -> None:
        """Print the template teacher's reasoning text (a plugin-provided command)."""
        from .components import fixed_reasoning

        print(fixed_reasoning(sub_action).render())


class SignCodecOptions(CodecOptions):  # codec options extend the shared chunk_size / binarize_gripper
    deadband: float = Field(0.1, ge=0, lt=1,
                            description="Normalised values within ±deadband encode as 'still'.")


class AccuracyBenchmarkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_episodes: int = Field(4, ge=1, description="Held-out episodes to score.")


@hookimpl
def refine_action_codecs():
    yield ActionCodecSpec(
        name="template-sign",
        summary="Template: each action dimension as one of three tokens (down / still / up)",
        factory="refine_plugin_template.codec:SignCodec",
        options=SignCodecOptions,
    )


@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(
        name="template-accuracy",
        summary="Template: teacher-forced action-token accuracy on held-out episodes",
        factory="refine_plugin_template.benchmark:AccuracyBenchmark",
        options=AccuracyBenchmarkOptions,
    )
