"""The Gemini teacher: frames as image parts, the prompt, structured JSON output.

The key comes from GEMINI_API_KEY or GOOGLE_API_KEY (environment only; never stored in any
file). The endpoint is the SDK's own: `GOOGLE_GEMINI_BASE_URL` points it elsewhere (a proxy, a
test server). The SDK's own retries are off: the pipeline retries, honouring Retry-After.
With `mode: batch` the same requests go through the Batch API instead (`teachers.gemini.batch`).
`decompose` answers a whole trajectory's VLM2VLA plan (online only; `refine_core.annotate.decompose`).
"""
from __future__ import annotations

import os

from refine_core import (Annotation, AnnotationRequest, MalformedAnswer, MissingExtra, PROMPT_VERSION, Price,
    Teacher, TeacherAnswer, TeacherIdentity, TokenUsage, TrajectoryPlan, TrajectoryRequest,
    TransientTeacherError, UsageError, build_prompt, reasoning_from_answer)
from refine_teachers.common import encode_png, request_frames, status_error
from refine_teachers.plan_prompt import (STEP_FIELDS, decompose_prompt, frame_labels, plan_from_text,
    plan_output_tokens)

# USD per million tokens (input, output), standard online tier, text/image input up to 200k tokens.
PRICES: dict[str, tuple[float, float]] = {
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
}


def api_key_from_env() -> str:
    key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
    if not key:
        raise UsageError("The gemini teacher needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the "
                         "environment")
    return key


class GeminiTeacher(Teacher):
    def __init__(self, options) -> None:
        try:
            from google import genai
            from google.genai import types
        except ImportError:
            raise MissingExtra("google-genai", "gemini", "the gemini teacher") from None
        self.options = options
        self._types = types
        self._batch = None
        self._client = genai.Client(
            api_key=api_key_from_env(),
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
        )
        self._config = types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=TeacherAnswer,
            temperature=options.temperature, max_output_tokens=options.max_output_tokens,
        )
        self.decompose_usage = TokenUsage()  # every decompose answer's tokens, for the cost (`price`)

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity(teacher="gemini", model=self.options.model, prompt_version=PROMPT_VERSION)

    @property
    def price(self) -> Price:
        known = PRICES.get(self.options.model.removeprefix("models/"))
        return Price(*known) if known else Price()

    def contents(self, request: AnnotationRequest) -> list:
        parts = [self._types.Part.from_bytes(data=encode_png(frame, self.options.max_image_side),
                                             mime_type="image/png")
                 for frame in request_frames(request, self.options.cameras)]
        return parts + [build_prompt(request.instruction, "json")]

    @property
    def batch(self):
        if self.options.mode != "batch":
            return None
        if self._batch is None:
            from .batch import GeminiBatch

            self._batch = GeminiBatch(self)
        return self._batch

    async def call(self, coroutine):
        """Await one SDK call, its failures mapped to the pipeline's error kinds."""
        import httpx2
        from google.genai import errors

        try:
            return await coroutine
        except errors.APIError as exc:
            raise status_error("Gemini", exc.code, exc.message or exc.status or "",
                               getattr(exc.response, "headers", None)) from None
        except httpx2.TransportError as exc:  # timeouts, refused or dropped connections
            raise TransientTeacherError(f"Gemini unreachable: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a body that is not JSON at all
            raise MalformedAnswer(f"Gemini sent an unreadable response: {exc}") from None

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        response = await self.call(self._client.aio.models.generate_content(
            model=self.options.model, contents=self.contents(request), config=self._config))
        return self.answer(response)

    def answer(self, response) -> Annotation:
        """The reasoning and token usage in one GenerateContentResponse (online or from a batch)."""
        tokens = self.usage(response)
        text = self.text(response)
        answer = response.parsed if isinstance(response.parsed, TeacherAnswer) else text
        return Annotation(reasoning=reasoning_from_answer(answer), usage=tokens)

    @staticmethod
    def usage(response) -> TokenUsage:
        """A response's tokens; output counts the thinking tokens too (billed at the output price)."""
        usage = response.usage_metadata
        if not usage:
            return TokenUsage()
        output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        return TokenUsage(input_tokens=usage.prompt_token_count or 0, output_tokens=output)

    @staticmethod
    def text(response) -> str:
        """The answer text of a response; MalformedAnswer when it has none (blocked, cut off empty)."""
        if not response.candidates:
            feedback = response.prompt_feedback
            reason = getattr(feedback, "block_reason", None) if feedback else None
            raise MalformedAnswer(f"Gemini returned no candidates{f' (blocked: {reason})' if reason else ''}")
        text = response.text
        if text is None:
            finish = getattr(response.candidates[0], "finish_reason", None)
            raise MalformedAnswer(f"Gemini returned no text (finish reason {finish})")
        return text

    # -- VLM2VLA: a whole trajectory's plan ------------------------------------------------------
    def plan_contents(self, request: TrajectoryRequest, feedback: str | None = None) -> list:
        """Each key frame after its step label, in order, then the prompt (with `feedback`)."""
        types = self._types
        parts = []
        for label, frame in zip(frame_labels(request), request.key_frames):
            parts += [types.Part.from_text(text=label),
                      types.Part.from_bytes(data=encode_png(frame, self.options.max_image_side),
                                            mime_type="image/png")]
        parts.append(types.Part.from_text(text=decompose_prompt(request, feedback)))
        return [types.Content(role="user", parts=parts)]

    def plan_config(self, request: TrajectoryRequest):
        """JSON constrained to the plan's shape; room for the whole log in the answer."""
        return self._types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=plan_schema(self._types),
            temperature=self.options.temperature,
            max_output_tokens=plan_output_tokens(request, self.options.max_output_tokens))

    async def decompose(self, request: TrajectoryRequest, feedback: str | None = None) -> TrajectoryPlan:
        """The episode's VLM2VLA plan in one generate_content call (`feedback`: why the previous answer
        was refused). Failures map as in `annotate`: TransientTeacherError (429, 5xx, unreachable;
        `decompose_with_retries` backs off and asks again), PermanentTeacherError, MalformedAnswer (no
        text, not JSON, not a plan). Every answer's tokens add to `decompose_usage`."""
        response = await self.call(self._client.aio.models.generate_content(
            model=self.options.model, contents=self.plan_contents(request, feedback),
            config=self.plan_config(request)))
        tokens = self.usage(response)
        self.decompose_usage = TokenUsage(self.decompose_usage.input_tokens + tokens.input_tokens,
                                          self.decompose_usage.output_tokens + tokens.output_tokens)
        text = self.text(response)
        try:
            return plan_from_text(text)
        except MalformedAnswer as exc:
            finish = getattr(response.candidates[0], "finish_reason", None)
            cut = " (cut off at the output-token limit)" if str(finish).endswith("MAX_TOKENS") else ""
            raise MalformedAnswer(f"{exc}{cut}") from None


def plan_schema(types):
    """`TrajectoryPlan` as a Gemini response schema: every field required, in the order asked, and
    each action row exactly 4 numbers."""
    text = types.Schema(type="STRING")
    row = types.Schema(type="ARRAY", items=types.Schema(type="NUMBER"), min_items=4, max_items=4)
    step = types.Schema(type="OBJECT", required=list(STEP_FIELDS), property_ordering=list(STEP_FIELDS),
                        properties={"subtask": text, "reasoning": text, "main_movements": text,
                                    "actions": types.Schema(type="ARRAY", items=row, min_items=1)})
    return types.Schema(type="OBJECT", required=["steps"],
                        properties={"steps": types.Schema(type="ARRAY", items=step, min_items=1)})
