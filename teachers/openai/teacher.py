"""The OpenAI-compatible teacher: one chat completion per step, frames as PNG data URIs,
the answer constrained by a JSON schema.

The key comes from OPENAI_API_KEY (environment only). It is required for OpenAI's own endpoint
and optional for a local server (`base_url`), which usually ignores it. The SDK's own retries
are off: the pipeline retries, honouring Retry-After.
"""
from __future__ import annotations

import base64
import os

from refine_core import (Annotation, AnnotationRequest, MalformedAnswer, MissingExtra, PROMPT_VERSION, Price,
    Teacher, TeacherIdentity, TokenUsage, TransientTeacherError, UsageError, answer_json_schema, build_prompt,
    reasoning_from_answer)
from refine_teachers.common import encode_png, request_frames, status_error

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

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity(teacher="openai", model=self.options.model, prompt_version=PROMPT_VERSION)

    @property
    def price(self) -> Price:
        known = PRICES.get(self.options.model) if self._official else None
        return Price(*known) if known else Price()

    def messages(self, request: AnnotationRequest) -> list[dict]:
        content: list[dict] = [{"type": "text", "text": build_prompt(request.instruction, "json")}]
        for frame in request_frames(request, self.options.cameras):
            data = base64.b64encode(encode_png(frame, self.options.max_image_side)).decode()
            content.append({"type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{data}",
                                          "detail": self.options.image_detail}})
        return [{"role": "user", "content": content}]

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        import openai

        try:
            completion = await self._client.chat.completions.create(
                model=self.options.model, messages=self.messages(request),
                response_format=self._response_format,
                temperature=self.options.temperature, max_tokens=self.options.max_tokens)
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
        if not completion.choices:
            raise MalformedAnswer("the server returned no choices")
        choice = completion.choices[0]
        if not choice.message or not choice.message.content:
            refusal = getattr(choice.message, "refusal", None) if choice.message else None
            raise MalformedAnswer(f"empty answer (finish reason {choice.finish_reason}"
                                  f"{f', refusal: {refusal}' if refusal else ''})")
        return Annotation(reasoning=reasoning_from_answer(choice.message.content), usage=tokens)
