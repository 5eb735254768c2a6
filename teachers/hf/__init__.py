"""`hf`: a local transformers vision-language model writing the tagged reasoning text."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import TeacherSpec, hookimpl


class HFTeacherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("hf_vlm", description="Registered backbone that loads the model.")
    path: str | None = Field(None,
                             description="Local directory or hub id of the model (backbone option `path`).")
    preset: str | None = Field(None,
                               description="Backbone preset instead of a path (e.g. 'tiny', random weights).")
    max_new_tokens: int = Field(384, ge=8, description="Generation budget per step.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="hf",
        summary="Local transformers VLM (via a refine backbone) generating the tagged reasoning text",
        factory="refine_teachers.hf.teacher:HFTeacher",
        options=HFTeacherOptions,
    )
