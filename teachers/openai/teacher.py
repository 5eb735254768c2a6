"""The OpenAI-compatible teacher: one chat completion per step, frames as PNG data URIs,
the answer constrained by a JSON schema.

The key comes from OPENAI_API_KEY (environment only). It is required for OpenAI's own endpoint
and optional for a local server (`base_url`), which usually ignores it. The SDK's own retries
are off: the pipeline retries, honouring Retry-After. `decompose` answers a whole trajectory's
VLM2VLA plan under a JSON schema of the plan (`refine_core.annotate.decompose`).
"""
from __future__ import annotations

import base64
import os

from refine_core import (Annotation, AnnotationRequest, MalformedAnswer, MissingExtra, PROMPT_VERSION, Price,
    Teacher, TeacherIdentity, TokenUsage, TrajectoryPlan, TrajectoryRequest, TransientTeacherError,
    UsageError, answer_json_schema, build_prompt, reasoning_from_answer)
from refine_teachers.common import encode_png, request_frames, status_error
from refine_teachers.plan_prompt import (decompose_prompt, frame_labels, plan_from_text, plan_json_schema,
    plan_output_tokens)

# USD per million tokens (input, output) on OpenAI's API; other servers are priced 0 unless
# annotate.price_* says otherwise.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
_LOCAL_KEY = "unused"  # what a local server that checks nothing receives when no key is set


class OpenAITeacher(Teacher):
    def __init__(self, options) -> None:
        try:
            import openai
        except ImportError:
            raise MissingExtra("openai", "openai", "the openai teacher") from None
        self.options = options
        base_url = options.base_url or os.environ.get("OPENAI_BASE_URL")
        key = os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise UsageError("The openai teacher needs OPENAI_API_KEY in the environment "
                             "(or set teacher.base_url to a local OpenAI-compatible server)")
        self._official = base_url is None
        self._client = openai.AsyncOpenAI(api_key=key or _LOCAL_KEY, base_url=base_url, max_retries=0)
        schema = {"name": "step_reasoning", "schema": answer_json_schema(), "strict": True}
        self._response_format = ({"type": "json_schema", "json_schema": schema}
                                 if options.response_format == "json_schema" else {"type": "json_object"})
        plan = {"name": "trajectory_plan", "schema": plan_json_schema(), "strict": True}
        self._plan_format = ({"type": "json_schema", "json_schema": plan}
                             if options.response_format == "json_schema" else {"type": "json_object"})
        self.decompose_usage = TokenUsage()  # every decompose answer's tokens, for the cost (`price`)

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity(teacher="openai", model=self.options.model, prompt_version=PROMPT_VERSION)

    @property
    def price(self) -> Price:
        known = PRICES.get(self.options.model) if self._official else None
        return Price(*known) if known else Price()

    def _image(self, frame) -> dict:
        data = base64.b64encode(encode_png(frame, self.options.max_image_side)).decode()
        return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}",
                                                   "detail": self.options.image_detail}}

    def messages(self, request: AnnotationRequest) -> list[dict]:
        content: list[dict] = [{"type": "text", "text": build_prompt(request.instruction, "json")}]
        content += [self._image(frame) for frame in request_frames(request, self.options.cameras)]
        return [{"role": "user", "content": content}]

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        text, tokens = await self._complete(self.messages(request), self._response_format,
                                            self.options.max_tokens)
        return Annotation(reasoning=reasoning_from_answer(text), usage=tokens)

    def plan_messages(self, request: TrajectoryRequest, feedback: str | None = None) -> list[dict]:
        """Each key frame after its step label, in order, then the prompt (with `feedback`)."""
        content: list[dict] = []
        for label, frame in zip(frame_labels(request), request.key_frames):
            content += [{"type": "text", "text": label}, self._image(frame)]
        content.append({"type": "text", "text": decompose_prompt(request, feedback)})
        return [{"role": "user", "content": content}]

    async def decompose(self, request: TrajectoryRequest, feedback: str | None = None) -> TrajectoryPlan:
        """The episode's VLM2VLA plan in one chat completion; failures map as in `annotate`, every
        answer's tokens add to `decompose_usage`."""
        text, tokens = await self._complete(self.plan_messages(request, feedback), self._plan_format,
                                            plan_output_tokens(request, self.options.max_tokens),
                                            count=True)
        return plan_from_text(text)

    async def _complete(self, messages: list[dict], response_format: dict, max_tokens: int,
                        count: bool = False) -> tuple[str, TokenUsage]:
        """One chat completion's answer text and tokens, failures mapped to the pipeline's error kinds
        (`count`: add the tokens to `decompose_usage`, even when the answer is empty)."""
        import openai

        try:
            completion = await self._client.chat.completions.create(
                model=self.options.model, messages=messages, response_format=response_format,
                temperature=self.options.temperature, max_tokens=max_tokens)
        except openai.APIStatusError as exc:
            raise status_error(
                "OpenAI-compatible server", exc.status_code, exc.message, exc.response.headers
            ) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise TransientTeacherError(
                f"OpenAI-compatible server unreachable: {type(exc).__name__}: {exc}"
            ) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise MalformedAnswer(f"unreadable response: {exc}") from None
        if not hasattr(completion, "choices"):  # the SDK hands back the raw text of a non-JSON body
            raise MalformedAnswer("the server sent a body that is not a chat completion: "
                                  f"{str(completion)[:80]!r}")
        usage = completion.usage
        tokens = TokenUsage(input_tokens=(usage.prompt_tokens or 0) if usage else 0,
                            output_tokens=(usage.completion_tokens or 0) if usage else 0)
        if count:
            self.decompose_usage = TokenUsage(self.decompose_usage.input_tokens + tokens.input_tokens,
                                              self.decompose_usage.output_tokens + tokens.output_tokens)
        if not completion.choices:
            raise MalformedAnswer("the server returned no choices")
        choice = completion.choices[0]
        if not choice.message or not choice.message.content:
            refusal = getattr(choice.message, "refusal", None) if choice.message else None
            raise MalformedAnswer(f"empty answer (finish reason {choice.finish_reason}"
                                  f"{f', refusal: {refusal}' if refusal else ''})")
        return choice.message.content, tokens
