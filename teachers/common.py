"""Helpers the API teachers share: frame encoding, Retry-After, HTTP status → error kind."""
from __future__ import annotations

import email.utils
import io
import time
from typing import Any

import numpy as np

from refine_core import AnnotationRequest, PermanentTeacherError, TransientTeacherError, UsageError


def request_frames(request: AnnotationRequest, cameras: str) -> list[np.ndarray]:
    """The frames a teacher sends: the primary camera only, or every camera (primary first)."""
    if cameras == "primary":
        return [request.images[request.primary_camera]]
    return [request.images[request.primary_camera]] + [
        image for name, image in sorted(request.images.items()) if name != request.primary_camera]


def encode_png(image: np.ndarray, max_side: int | None = None) -> bytes:
    """Lossless PNG of a uint8 HWC frame, shrunk to `max_side` pixels on its longer side if set."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    if max_side and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1,
                                                                            round(picture.height * scale))),
                                 Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None when absent."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def status_error(vendor: str, status: int | None, message: str, headers: Any = None) -> Exception:
    """The pipeline's error kind for an HTTP error status of an API teacher."""
    text = f"{vendor} HTTP {status}: {' '.join(str(message).split())[:300]}"
    if status in (401, 403):
        return UsageError(f"{vendor} rejected the credentials (HTTP {status}); check the API key in the "
                          "environment")
    if status is None or status in (408, 409, 429) or status >= 500:
        return TransientTeacherError(text, retry_after=retry_after_seconds(headers))
    return PermanentTeacherError(text)
