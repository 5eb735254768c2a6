"""`gemini`: Google's Gemini models through the google-genai SDK."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from refine_core import TeacherSpec, hookimpl


class GeminiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("gemini-2.0-flash", description="Gemini model name.")
    temperature: float = Field(0.2, ge=0, le=2)
    max_output_tokens: int = Field(1024, ge=64)
    cameras: Literal["primary", "all"] = Field("primary", description="Frames sent per step.")
    max_image_side: int | None = Field(None, ge=32, description="Shrink frames to this many pixels (longer side).")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="gemini",
        summary="Gemini (google-genai): images + structured JSON output; key from GEMINI_API_KEY/GOOGLE_API_KEY",
        factory="teachers.gemini.teacher:GeminiTeacher",
        options=GeminiOptions,
    )
