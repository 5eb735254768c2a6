"""TensorFlow for reading and writing RLDS, imported without its native start-up chatter.

Importing TensorFlow prints absl "I0000 … oneDNN custom operations are on" and "could not find
cuda drivers" lines, and enumerating devices prints "E0000 … failed call to cuInit" on machines
without a GPU — straight to file descriptor 2 from C++, before `TF_CPP_MIN_LOG_LEVEL` applies. They
look like failures to users and are not. The first import and the device setup therefore run
with descriptor 2 pointed at /dev/null; Python exceptions still propagate. `--debug` (or
REFINE_DEBUG=1) leaves everything visible.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator


def _debugging() -> bool:
    return os.environ.get("REFINE_DEBUG", "") not in ("", "0") or "--debug" in sys.argv[1:]


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    if _debugging():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (embedded interpreters): leave it alone
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_ready = False


def tensorflow() -> tuple[Any, Any]:
    """(tensorflow, tensorflow_datasets); the first call imports them quietly and hides the GPUs
    from TensorFlow (reading data must not claim the GPU torch trains on)."""
    global _ready
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # later warnings too, once logging is initialised
    with contextlib.nullcontext() if _ready else native_stderr_silenced():
        import tensorflow as tf
        import tensorflow_datasets as tfds

        if not _ready:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # devices already initialised by other TensorFlow use in this process
                pass
            _ready = True
    return tf, tfds
