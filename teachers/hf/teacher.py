"""The local HF teacher: a refine backbone's model generates the tagged reasoning text for a
frame and the prompt; `Reasoning.parse` reads it. Text that does not parse is a malformed
answer (asked again, then recorded as failed with the parse error), never a crash.

Generation is greedy, so the same frame and prompt give the same text; one generation runs at a
time (the model is not shared across threads), off the event loop.
"""
from __future__ import annotations

import asyncio
import threading

from refine_core import (Annotation, AnnotationRequest, MalformedAnswer, PROMPT_VERSION, Reasoning, Teacher,
    TeacherIdentity, TokenUsage, UsageError, build_prompt, get_registry)


class HFTeacher(Teacher):
    def __init__(self, options) -> None:
        if options.path:
            backbone_options, self.model_name = {"path": options.path}, options.path
        elif options.preset:
            backbone_options, self.model_name = {"preset": options.preset}, f"preset-{options.preset}"
        else:
            raise UsageError("The hf teacher needs a model: set teacher.path=DIR_OR_HUB_ID (or "
                             "teacher.preset=tiny)")
        self.options = options
        self.backbone = get_registry().build("backbone", options.backbone, backbone_options)
        self._lock = threading.Lock()

    @property
    def identity(self) -> TeacherIdentity:
        # The text answer format is part of what is asked, so it is part of the prompt version.
        return TeacherIdentity(teacher="hf", model=self.model_name, prompt_version=f"{PROMPT_VERSION}+text")

    def _generate(self, request: AnnotationRequest) -> tuple[str, int, int]:
        prompt = build_prompt(request.instruction, "text")
        with self._lock:
            ids = self.backbone.generate_ids(request.images[request.primary_camera], prompt,
                                             self.options.max_new_tokens)
        prompt_tokens = len(self.backbone.prompt_ids(prompt))
        return self.backbone.tokenizer.decode(ids, skip_special_tokens=True), prompt_tokens, len(ids)

    async def annotate(self, request: AnnotationRequest) -> Annotation:
        text, prompt_tokens, new_tokens = await asyncio.to_thread(self._generate, request)
        try:
            reasoning = Reasoning.parse(text)
        except ValueError as exc:
            raise MalformedAnswer(
                f"generated text is not tagged reasoning ({exc}); it begins {text[:60]!r}"
            ) from None
        return Annotation(reasoning=reasoning, usage=TokenUsage(input_tokens=prompt_tokens,
                                                                output_tokens=new_tokens))
