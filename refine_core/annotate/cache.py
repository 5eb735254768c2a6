"""A content cache of teacher answers shared by every run on this machine.

Keyed by the teacher's identity (teacher, model, prompt version), the instruction and the
exact pixels of every frame in the request: the same question to the same teacher is paid for
once, whichever dataset, OUT directory or shard asks it. Best effort: an entry that cannot be
read is a miss, and a write is atomic but not durable (`atomic_write(durable=False)`): the
journal, not the cache, is what makes a run durable.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from refine_core.files import atomic_write, cache_dir
from refine_core.teacher import AnnotationRequest, TeacherIdentity


def image_digest(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def content_key(identity: TeacherIdentity, request: AnnotationRequest) -> str:
    parts = [identity.teacher, identity.model, identity.prompt_version, " ".join(request.instruction.split()),
             request.primary_camera]
    parts += [f"{name}={image_digest(request.images[name])}" for name in sorted(request.images)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class ContentCache:
    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory else cache_dir("annotations")

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(key).read_bytes())
        except (OSError, ValueError):
            return None

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(value), durable=False)
        except OSError:
            pass  # a cache that cannot be written only costs a later re-ask
