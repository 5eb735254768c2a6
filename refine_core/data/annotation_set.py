"""The on-disk annotation set `refine annotate` writes and training reads.

Layout of an annotation directory OUT:

    OUT/manifest.json       {"format": 1, "dataset": name, "dataset_identity": str,
                             "teacher": "teacher/model/prompt_version", "strategy": str,
                             "episodes": {episode_id: "<file>.json"}, "counts": {...}, ...}
    OUT/<file>.json         {"episode_id": str, "steps": [{"step": int, "text": str,
                             "reasoning": {...Reasoning fields...}, "teacher": str}, ...]}

One file per completed episode (written atomically); files are named by `episode_filename`.
Work in progress lives elsewhere in OUT (the writer's journal) and is not read here.

The stored `text` is the ReFineVLA rendering. `with_format(name)` gives a view whose `text()`
is the same reasoning in another training format (`train.reasoning_format`, e.g. `ecot`);
every stored text is converted once up front, so a text that cannot be fails before training.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from refine_core.errors import UsageError
from refine_core.reasoning import Reasoning
from refine_core.data.reasoning_formats import DEFAULT_FORMAT, get_reasoning_format

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def episode_filename(episode_id: str) -> str:
    """A file name safe on every filesystem, unique per episode id (readable prefix + hash)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", episode_id).strip("._")[:60] or "episode"
    return f"{readable}-{hashlib.sha1(episode_id.encode()).hexdigest()[:10]}.json"


@dataclass
class AnnotationSet:
    """Reasoning text per (episode_id, step_index), plus what produced it."""

    directory: Path
    dataset: str
    dataset_identity: str
    teacher: str
    texts: dict[tuple[str, int], str] = field(default_factory=dict)
    reasoning_format: str = DEFAULT_FORMAT
    _parsed: dict[tuple[str, int], Reasoning] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, directory: str | Path) -> "AnnotationSet":
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise UsageError(f"No annotations in {directory} (no {MANIFEST}); run `refine annotate --out "
                             f"{directory}` first")
        try:
            manifest = json.loads(manifest_path.read_text())
            texts: dict[tuple[str, int], str] = {}
            for episode_id, filename in manifest.get("episodes", {}).items():
                episode = json.loads((directory / filename).read_text())
                for record in episode["steps"]:
                    texts[(episode_id, int(record["step"]))] = record["text"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"Annotation set {directory} is unreadable ({type(exc).__name__}: {exc}); "
                             f"re-run `refine annotate --out {directory}` to repair it") from None
        return cls(directory=directory, dataset=manifest.get("dataset", ""),
                   dataset_identity=manifest.get("dataset_identity", ""), teacher=manifest.get("teacher", ""),
                   texts=texts)

    def check_matches(self, dataset_name: str, dataset_identity: str) -> None:
        """Refuse annotations made for another dataset (or another version of it)."""
        if self.dataset_identity != dataset_identity:
            raise UsageError(
                f"Annotations in {self.directory} were made for dataset '{self.dataset}' "
                f"({self.dataset_identity}), not for '{dataset_name}' ({dataset_identity}); "
                f"annotate this dataset or pass the matching --annotations directory")

    def with_format(self, name: str) -> "AnnotationSet":
        """This set with `text()` in reasoning format `name`; UsageError naming the first step
        whose stored text does not parse or cannot be written in that format."""
        fmt = get_reasoning_format(name)
        if name == DEFAULT_FORMAT:
            return replace(self, reasoning_format=name, _parsed={})
        parsed: dict[tuple[str, int], Reasoning] = {}
        for (episode_id, step), text in sorted(self.texts.items()):
            try:
                parsed[(episode_id, step)] = reasoning = Reasoning.parse(text)
                fmt.render(reasoning)
            except ValueError as exc:
                first = " ".join(str(exc).split())[:200]
                raise UsageError(f"Annotation {episode_id}/{step} in {self.directory} cannot be written as "
                                 f"'{name}' reasoning: {first}") from None
        return replace(self, reasoning_format=name, _parsed=parsed)

    def text(self, episode_id: str, step_index: int, instruction: str | None = None) -> str | None:
        """The step's reasoning text in this set's format (`instruction`: for formats that restate it)."""
        if self.reasoning_format == DEFAULT_FORMAT:
            return self.texts.get((episode_id, step_index))
        reasoning = self._parsed.get((episode_id, step_index))
        if reasoning is None:
            return None
        try:
            return get_reasoning_format(self.reasoning_format).render(reasoning, instruction)
        except ValueError as exc:  # only the instruction is new here; the reasoning rendered in with_format
            raise UsageError(
                f"Annotation {episode_id}/{step_index}: {' '.join(str(exc).split())[:200]}"
            ) from None

    def __len__(self) -> int:
        return len(self.texts)
