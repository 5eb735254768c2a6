"""`openai`: any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, LM Studio, …)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from refine_core import TeacherSpec, hookimpl


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("gpt-4o-mini", description="Model name as the server knows it.")
    base_url: str | None = Field(None,
                                 description="Server URL, e.g. http://localhost:8000/v1 (default: OpenAI's, "
                                                   "or OPENAI_BASE_URL).")
    temperature: float = Field(0.2, ge=0, le=2)
    max_tokens: int = Field(1024, ge=64)
    cameras: Literal["primary", "all"] = Field("primary", description="Frames sent per step.")
    max_image_side: int | None = Field(None, ge=32,
                                       description="Shrink frames to this many pixels (longer side).")
    image_detail: Literal["auto", "low", "high"] = Field("auto", description="OpenAI's image detail level.")
    response_format: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="json_object for servers without JSON-schema support.")


@hookimpl
def refine_teachers():
    yield TeacherSpec(
        name="openai",
        summary="Any OpenAI-compatible /v1/chat/completions server: images as data URIs, JSON-schema output",
        factory="refine_teachers.openai.teacher:OpenAITeacher",
        options=OpenAIOptions,
    )
