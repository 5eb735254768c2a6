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
    max_image_side: int | None = Field(None, ge=32,
                                       description="Shrink frames to this many pixels (longer side).")
    mode: Literal["online", "batch"] = Field(
        "online", description="online: one request per step; batch: Batch API jobs at half the price, "
                              "24 h target turnaround (resumable: an interrupted run polls the same jobs "
                              "again).")
    batch_size: int = Field(100, ge=1, le=10_000,
                            description="Requests per batch job (a job's inlined requests "
                                                               "must stay under 20 MB: lower it for large "
                                                               "frames).")
    poll_interval: float = Field(30.0, gt=0, description="Seconds between batch job status checks.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="gemini",
        summary="Gemini (google-genai): images + structured JSON output, online or Batch API (mode: batch); "
                "key from GEMINI_API_KEY/GOOGLE_API_KEY",
        factory="refine_teachers.gemini.teacher:GeminiTeacher",
        options=GeminiOptions,
    )
