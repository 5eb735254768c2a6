"""Where an RLDS dataset lives on disk and what its features are — read without TensorFlow.

Everything here works from the files tfds writes (`dataset_info.json`, `features.json`, the
TFRecord shards), so a wrong path, a dataset of the wrong schema or an image of the wrong rank
fails in a fraction of a second, before the slow TensorFlow import.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from refine_core import UsageError

GripperConvention = Literal["open_is_1", "closed_is_1", "closedness_relative"]

_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")
_ACTION_PART = re.compile(r"^(?P<key>[^\[\]]+?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


@dataclass(frozen=True)
class Feature:
    kind: str  # "image", "tensor", "text" or the tfds class name for anything else
    shape: tuple[int | None, ...] = ()
    dtype: str = ""


@dataclass(frozen=True)
class RldsLayout:
    """How one RLDS schema maps onto refine's Episode (see `plugins.rlds.reader`).

    Keys are paths inside a step (`observation/image_0`, `action/world_vector`); a bare name is
    looked up at step level first, then inside `observation`. Action parts are concatenated in
    order and may carry a slice (`action[0:6]`); together they must give 7 values, the last one
    being the gripper in `gripper` convention.
    """

    image_keys: tuple[str, ...]
    instruction_key: str
    action_keys: tuple[str, ...]
    gripper: GripperConvention = "open_is_1"
    binarize_gripper: bool = False
    drop_first_step: bool = False
    relabel_from_state: bool = False
    state_keys: tuple[str, ...] = ()
    builder: str | None = None
    robot: str = "unknown"
    control_frequency: float = 0.0
    drop_blank_cameras: bool = True
    camera_names: tuple[str, ...] = field(default=())

    def cameras(self) -> tuple[str, ...]:
        return self.camera_names or tuple(k.rsplit("/", 1)[-1] for k in self.image_keys)


@dataclass(frozen=True)
class ActionPart:
    key: str
    start: int | None
    stop: int | None


def parse_action_part(text: str) -> ActionPart:
    match = _ACTION_PART.match(text.strip())
    if not match:
        raise UsageError(f"Bad action key '{text}': write a key, optionally sliced, e.g. 'action' or "
                         "'action[0:6]'")
    start, stop = match.group("start"), match.group("stop")
    return ActionPart(match.group("key"), int(start) if start else None, int(stop) if stop else None)


# -- locating the builder folder -------------------------------------------------------------
def _is_version_dir(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() and (path / "features.json").is_file()


def _newest_version(builder_dir: Path) -> Path | None:
    versions = [
        p for p in builder_dir.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name) and _is_version_dir(p)
    ]
    return max(versions, key=lambda p: tuple(int(x) for x in p.name.split("."))) if versions else None


def locate_version_dir(data_dir: str | Path | None, builder: str | None, dataset: str) -> Path:
    """The `<builder>/<version>` folder for `data_dir`, which may name that folder, the builder
    folder (newest version wins) or a parent holding `<builder>/<version>`."""
    if data_dir is None or str(data_dir).strip() == "":
        hint = f"DIR/{builder}/<version>/" if builder else "the builder's <version>/ folder"
        raise UsageError(
            f"The {dataset} dataset needs a data directory: --set dataset.data_dir=DIR ({hint} with "
            "dataset_info.json)"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"Data directory {root} does not exist (dataset.data_dir for the {dataset} dataset)")
    if _is_version_dir(root):
        return root.resolve()
    candidates = [root]
    if builder:
        candidates.insert(0, root / builder)
    else:  # a parent holding a single builder folder needs no name
        builders = [p for p in root.iterdir() if p.is_dir() and _newest_version(p) is not None]
        candidates += builders if len(builders) == 1 else []
    for candidate in candidates:
        if candidate.is_dir():
            version_dir = _newest_version(candidate)
            if version_dir is not None:
                return version_dir.resolve()
    expected = f"{root}/{builder}/<version>/" if builder else f"{root}/<version>/"
    raise UsageError(
        f"No RLDS builder files in {root}: expected dataset_info.json and features.json in {expected} "
        f"(dataset.data_dir may name the version folder, the builder folder or its parent)"
    )


# -- features.json ---------------------------------------------------------------------------
def _shape(spec: dict) -> tuple[int | None, ...]:
    dims = (spec.get("shape") or {}).get("dimensions") or []
    return tuple(None if int(d) < 0 else int(d) for d in dims)


def _flatten(node: dict, prefix: str, out: dict[str, Feature]) -> None:
    cls = node.get("pythonClassName", "").rsplit(".", 1)[-1]
    if "featuresDict" in node:
        for name, child in node["featuresDict"]["features"].items():
            _flatten(child, f"{prefix}{name}/", out)
    elif "sequence" in node:  # `steps` (a tfds Dataset) or a Sequence: keys continue below it
        _flatten(node["sequence"]["feature"], prefix, out)
    elif "image" in node:
        out[prefix[:-1]] = Feature("image", _shape(node["image"]), node["image"].get("dtype", "uint8"))
    elif "tensor" in node:
        out[prefix[:-1]] = Feature("tensor", _shape(node["tensor"]), node["tensor"].get("dtype", ""))
    elif "text" in node or cls == "Text":
        out[prefix[:-1]] = Feature("text", (), "string")
    else:
        out[prefix[:-1]] = Feature(cls or "unknown")


def read_features(version_dir: Path) -> dict[str, Feature]:
    """Every leaf feature by path (`steps/observation/image_0`, `episode_metadata/file_path`)."""
    path = version_dir / "features.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read {path}: {exc}") from None
    out: dict[str, Feature] = {}
    _flatten(data, "", out)
    return out


def step_features(features: dict[str, Feature]) -> dict[str, Feature]:
    return {k[len("steps/"):]: v for k, v in features.items() if k.startswith("steps/")}


def resolve_key(key: str, steps: dict[str, Feature]) -> str | None:
    """The step path of `key` (exact, or `observation/<key>` for a bare name); None if absent."""
    for candidate in (key,) if "/" in key else (key, f"observation/{key}"):
        if candidate in steps or any(k.startswith(candidate + "/") for k in steps):
            return candidate
    return None


def validate_layout(layout: RldsLayout, features: dict[str, Feature], version_dir: Path,
                    dataset: str) -> dict[str, str]:
    """Check the dataset has what `layout` reads; returns each configured key's resolved path."""
    steps = step_features(features)
    if layout.relabel_from_state and not layout.state_keys:
        raise UsageError(f"The {dataset} dataset relabels actions from the state but names no state key")
    if not steps:
        raise UsageError(f"{version_dir} is not an RLDS dataset: features.json has no 'steps'")
    wanted = [*layout.image_keys, layout.instruction_key,
              *(parse_action_part(a).key for a in layout.action_keys),
              *layout.state_keys]
    resolved: dict[str, str] = {}
    for key in wanted:
        path = resolve_key(key, steps)
        if path is None:
            found = ", ".join(sorted(steps))
            raise UsageError(
                f"The {dataset} dataset needs step key '{key}', missing in {version_dir}/features.json. "
                f"Found: {found}"
            )
        resolved[key] = path
    for key in layout.image_keys:
        feature = steps.get(resolved[key])
        if (
            feature is None
            or feature.kind not in ("image", "tensor")
            or len(feature.shape) != 3
            or feature.shape[-1] not in (3, None)
        ):
            shape = list(feature.shape) if feature is not None else "a nested dict"
            raise UsageError(
                f"Image '{resolved[key]}' in {version_dir} has shape {shape} per step; refine needs H x W x "
                "3 RGB images"
            )
    width = 0
    for text in layout.action_keys:
        part = parse_action_part(text)
        feature = steps.get(resolved[part.key])
        if feature is None or feature.kind != "tensor" or len(feature.shape) > 1 or None in feature.shape:
            raise UsageError(f"Action key '{resolved[part.key]}' in {version_dir} is not a fixed-size vector")
        size = feature.shape[0] if feature.shape else 1
        width += len(range(size)[slice(part.start, part.stop)])
    if width != 7:
        raise UsageError(
            f"Action keys {list(layout.action_keys)} give {width} values per step in {version_dir}; "
            f"refine needs 7 (dx, dy, dz, droll, dpitch, dyaw, gripper)"
        )
    return resolved


def content_fingerprint(version_dir: Path) -> str:
    """Changes when the data does: builder metadata, schema, and each shard's name, size and mtime."""
    digest = hashlib.sha256()
    for name in ("dataset_info.json", "features.json"):
        digest.update((version_dir / name).read_bytes())
    for shard in sorted(version_dir.glob("*.tfrecord*")):
        stat = shard.stat()
        digest.update(f"{shard.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
