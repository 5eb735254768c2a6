"""Registration: one function per hook, each yielding spec records.

Keep this module import-light: refine imports it for every command (even `refine --help`),
so heavy libraries belong in the modules the factories point at.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import DatasetSpec, TeacherSpec, hookimpl


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
