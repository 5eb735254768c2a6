"""The Gemini Batch API behind `mode: batch`: one job of inlined GenerateContent requests per chunk.

Facts this relies on (Gemini Developer API through google-genai's `client.aio.batches`):
`create(model, src=[InlinedRequest…], config=CreateBatchJobConfig(display_name=…))` posts
`models/{model}:batchGenerateContent` and returns a `BatchJob` whose `name` is `batches/{id}`;
`get(name=…)` reads `batches/{id}`; `BatchJob.state` is a `JobState` (the API's
`BATCH_STATE_*` mapped to `JOB_STATE_*`); a succeeded job holds `dest.inlined_responses`, one
`InlinedResponse` (`response` or `error`, plus the request's `metadata`) per request, in request
order. A job's inlined requests must stay under 20 MB; the batch price is half the online one.
"""
from __future__ import annotations

from refine_core import (Annotation, AnnotationRequest, BatchStatus, BatchTeacher, MalformedAnswer,
    PermanentTeacherError, TeacherError, UsageError)

INLINE_LIMIT_BYTES = 20_000_000  # a job's inlined requests, as sent (base64 frames + prompt)

# JobState values → the pipeline's vendor-neutral states; anything else (queued, paused, updating,
# cancelling, unspecified) is an unfinished job and is polled again.
STATES = {
    "JOB_STATE_PENDING": "pending", "JOB_STATE_QUEUED": "pending", "JOB_STATE_RUNNING": "running",
    "JOB_STATE_SUCCEEDED": "succeeded", "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed", "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired",
}


class GeminiBatch(BatchTeacher):
    price_factor = 0.5

    def __init__(self, teacher) -> None:
        self.teacher = teacher
        self.max_requests = teacher.options.batch_size
        self.poll_interval = teacher.options.poll_interval

    async def submit(self, requests: list[AnnotationRequest], label: str) -> str:
        types = self.teacher._types
        inlined, size = [], 0
        for index, request in enumerate(requests):
            contents = self.teacher.contents(request)
            size += sum(len(part.inline_data.data) * 4 // 3 for part in contents
                        if getattr(part, "inline_data", None) is not None) + 4096  # + prompt, config
            # The index comes back with the answer where the API returns metadata: a check on the order.
            inlined.append(types.InlinedRequest(contents=contents, config=self.teacher._config,
                                                metadata={"index": str(index)}))
        if size > INLINE_LIMIT_BYTES:
            raise UsageError(
                f"A Gemini batch job of {len(requests)} requests would send about {size / 1e6:.0f} MB "
                "inline, over the "
                f"20 MB limit: lower teacher.batch_size (now {self.max_requests}) or set "
                "teacher.max_image_side")
        job = await self.teacher.call(self.teacher._client.aio.batches.create(
            model=self.teacher.options.model, src=inlined,
            config=types.CreateBatchJobConfig(display_name=label)))
        if not job.name:
            raise PermanentTeacherError("Gemini accepted the batch job but returned no job name")
        return job.name

    async def status(self, job: str) -> BatchStatus:
        found = await self.teacher.call(self.teacher._client.aio.batches.get(name=job))
        raw = getattr(found.state, "value", found.state) or ""
        state = STATES.get(str(raw), "running")
        if state != "succeeded":
            error = found.error
            message = " ".join(str(error.message or "").split())[:300] if error is not None else ""
            return BatchStatus(state, message=message)
        responses = list((found.dest.inlined_responses if found.dest is not None else None) or [])
        indexed = all((item.metadata or {}).get("index", "").isdigit() for item in responses)
        size = max([len(responses),
                    *((int(item.metadata["index"]) + 1 for item in responses) if indexed else ())])
        results: list[Annotation | TeacherError | None] = [None] * size
        for position, item in enumerate(responses):
            slot = int(item.metadata["index"]) if indexed else position
            if 0 <= slot < len(results) and results[slot] is None:
                results[slot] = self._result(item)
        return BatchStatus("succeeded", results=[r if r is not None else MalformedAnswer(
            "no answer for this request in the job's output") for r in results])

    def _result(self, item) -> Annotation | TeacherError:
        if item.error is not None:
            message = " ".join(str(item.error.message or "").split())[:300]
            return PermanentTeacherError(f"Gemini batch request error {item.error.code}: {message}")
        if item.response is None:
            return MalformedAnswer("Gemini returned neither an answer nor an error for this request")
        try:
            return self.teacher.answer(item.response)
        except TeacherError as exc:
            return exc
        except ValueError as exc:
            return MalformedAnswer(f"Gemini sent an unreadable answer: {exc}")
