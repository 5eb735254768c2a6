"""`scripted`: offline, deterministic reasoning from the instruction, the actions and step metadata."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from refine_core import TeacherSpec, hookimpl


class ScriptedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    style: Literal["compact", "full"] = Field(
        "compact", description="compact: a short template per phase (goal direction in words, the fixed plan "
                               "of the instruction), which a small model learns in minutes; full: sentences "
                               "with distances in metres and the whole remaining plan.")
    decimals: int = Field(2, ge=0, le=4,
                          description="Decimals of the distances (metres) in full-style spatial reasoning.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="scripted",
        summary="Offline, deterministic: reasoning from instruction, motion phases and step metadata (no "
                "model)",
        factory="refine_teachers.scripted.teacher:ScriptedTeacher",
        options=ScriptedOptions,
    )
