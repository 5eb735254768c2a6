"""`scripted`: offline, deterministic reasoning from the instruction, the actions and step metadata."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import TeacherSpec, hookimpl


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decimals: int = Field(2, ge=0, le=4,
                          description="Decimals of the distances (metres) in spatial reasoning.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="scripted",
        summary="Offline, deterministic: reasoning from instruction, motion phases and step metadata (no "
                "model)",
        factory="refine_teachers.scripted.teacher:ScriptedTeacher",
        options=ScriptedOptions,
    )
