"""Rate limiting and retrying of teacher requests (vendor-agnostic).

`RateLimiter`: two token buckets, requests/min and tokens/min, each refilling continuously
and holding at most one second of budget (so a start does not burst a minute's worth).
Waiters are served in order. Tokens are reserved from the request's estimate and settled with
the real usage once the answer arrives.

`RetryPolicy`: exponential backoff with jitter; a server's Retry-After is a lower bound.

`ask`: one step's request under both, retried on transient errors and re-asked on malformed answers.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from refine_core.errors import RefineError
from refine_core.reasoning import Reasoning
from refine_core.teacher import (AnnotationRequest, MalformedAnswer, PermanentTeacherError, Teacher,
    TokenUsage, TransientTeacherError)


class _Bucket:
    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)  # one second of budget
        self.level = self.capacity
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        # A request larger than the bucket waits for a full bucket and then drives it negative
        # (the debt is paid back by later waiters), so big requests are never starved.
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        self._requests = _Bucket(requests_per_minute) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    async def acquire(self, tokens: int = 0) -> None:
        if not self.active:
            return
        async with self._lock:  # FIFO: the first waiter is served first
            while True:
                now = time.monotonic()
                wait = 0.0
                for bucket, amount in ((self._requests, 1.0), (self._tokens, float(tokens))):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self._requests is not None:
                self._requests.level -= 1.0
            if self._tokens is not None:
                self._tokens.level -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        """Correct a reservation with the tokens the request really used."""
        if self._tokens is not None:
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # transient failures (429, 5xx, timeouts, lost connections)
    max_reasks: int = 2  # malformed answers asked again
    initial_delay: float = 1.0
    max_delay: float = 60.0
    request_timeout: float | None = 120.0

    @classmethod
    def from_settings(cls, settings: Any, min_timeout: float | None = None) -> "RetryPolicy":
        """The `annotate.*` retry settings; `min_timeout` raises the per-request limit (a set limit
        only: none stays none)."""
        timeout = settings.request_timeout
        if timeout is not None and min_timeout is not None:
            timeout = max(timeout, min_timeout)
        return cls(max_retries=settings.max_retries, max_reasks=settings.max_reasks,
                   initial_delay=settings.backoff_initial, max_delay=settings.backoff_max,
                   request_timeout=timeout)

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retry` (0-based): half fixed, half random ("equal
        jitter"), so retries of many concurrent requests spread out; never below Retry-After."""
        ceiling = min(self.max_delay, self.initial_delay * (2 ** retry))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(wait, retry_after or 0.0)


@dataclass
class Outcome:
    reasoning: Reasoning | None
    usage: TokenUsage
    attempts: int
    reason: str | None = None


async def ask(teacher: Teacher, request: AnnotationRequest, limiter: RateLimiter, policy: RetryPolicy,
              on_retry: Callable[[], None] | None = None) -> Outcome:
    """One step's answer, after retries and re-asks (each reported to `on_retry`); a failure comes
    back with its reason."""
    retries = reasks = attempts = 0
    while True:
        estimate = teacher.estimate_usage(request)
        reserved = estimate.input_tokens + estimate.output_tokens
        await limiter.acquire(reserved)
        attempts += 1
        try:
            call = teacher.annotate(request)
            annotation = await (asyncio.wait_for(call,
                                                 policy.request_timeout) if policy.request_timeout else call)
        except (TimeoutError, asyncio.TimeoutError):
            error: Exception = TransientTeacherError(f"no answer within {policy.request_timeout:g} s")
        except (TransientTeacherError, MalformedAnswer) as exc:
            error = exc
        except PermanentTeacherError as exc:
            return Outcome(None, TokenUsage(), attempts, f"rejected: {exc}")
        except RefineError:
            raise  # e.g. a rejected API key: no point asking anything else
        except Exception as exc:  # a teacher bug must not lose the run; it is recorded per step
            return Outcome(None, TokenUsage(), attempts, f"{type(exc).__name__}: {exc}")
        else:
            usage = annotation.usage
            limiter.settle(reserved, usage.input_tokens + usage.output_tokens)
            return Outcome(annotation.reasoning, usage, attempts)
        if isinstance(error, MalformedAnswer):
            if reasks >= policy.max_reasks:
                return Outcome(None, TokenUsage(), attempts, f"malformed answer {reasks + 1} times: {error}")
            reasks += 1
        else:
            limiter.settle(reserved, 0)  # refused or lost requests do not use the token budget
            if retries >= policy.max_retries:
                return Outcome(None, TokenUsage(), attempts, f"gave up after {attempts} attempts: {error}")
            await asyncio.sleep(policy.delay(retries, getattr(error, "retry_after", None)))
            retries += 1
        if on_retry is not None:
            on_retry()
