"""Frames of one episode out of a LeRobot mp4 (several episodes back to back), with PyAV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from refine_core import MissingExtra, UsageError


def decode_frames(path: Path, timestamps: np.ndarray, tolerance: float) -> np.ndarray:
    """[N, H, W, 3] uint8: for each timestamp (seconds in the file), the frame shown at it.

    Seeks to the keyframe before the first timestamp and decodes forward to the last, so an
    episode in the middle of a long file costs its own frames plus at most one GOP.
    """
    try:
        import av
    except ImportError:
        raise MissingExtra("av", "lerobot", "reading LeRobot videos") from None
    if not path.is_file():
        raise UsageError(f"LeRobot video file {path} is missing")
    timestamps = np.asarray(timestamps, dtype=np.float64)
    first, last = float(timestamps.min()), float(timestamps.max())
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = stream.time_base
            container.seek(max(int((first - tolerance) / base), 0), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                at = float(frame.pts * base)
                if at < first - tolerance:
                    continue
                times.append(at)
                frames.append(frame.to_ndarray(format="rgb24"))
                if at >= last - tolerance:
                    break
    except av.error.FFmpegError as exc:
        raise UsageError(f"Cannot decode LeRobot video {path}: {exc}") from None
    if not frames:
        raise UsageError(f"LeRobot video {path} has no frames between {first:.3f}s and {last:.3f}s")
    decoded = np.asarray(times)
    nearest = np.abs(decoded[None, :] - timestamps[:, None]).argmin(axis=1)
    gap = np.abs(decoded[nearest] - timestamps)
    if gap.max() > tolerance:
        worst = int(gap.argmax())
        raise UsageError(f"LeRobot video {path} has no frame within {tolerance}s of {timestamps[worst]:.3f}s "
                         f"(nearest {decoded[nearest[worst]]:.3f}s); raise dataset.video_tolerance_s "
                         f"or check the episode's from_timestamp")
    return np.stack([frames[i] for i in nearest])
