"""Read a run directory stage by stage and turn what is there into report sections.

Run layout (written by `refine run`): config.yaml, run_state.json, annotations/, train/
(metrics.jsonl, checkpoints/step-*), eval/ (results.jsonl, summary.json), report/. A stage
that has not run gives a section that says so; nothing here fails because a stage is missing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from refine_core.report.blocks import Code, Example, Figure, Section, Table, Text, cell, missing_section

ANNOTATION_COUNTS = ("planned", "annotated", "failed", "retried", "cached", "input_tokens", "output_tokens")
EXAMPLES = 3


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a crash: the rest is still worth reporting
            continue
    return records


def _problem(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def load_config(run_dir: Path) -> Any:
    """The run's RunConfig (config.yaml, else the newest checkpoint's), or None."""
    from refine_core.config import RunConfig
    from refine_core.training.checkpoint import RUN_INFO, latest_checkpoint

    try:
        import yaml

        path = run_dir / "config.yaml"
        if path.is_file():
            return RunConfig.model_validate(yaml.safe_load(path.read_text()) or {})
        checkpoint = latest_checkpoint(run_dir / "train")
        info = _read_json(checkpoint / RUN_INFO) if checkpoint else None
        return RunConfig.model_validate(info["config"]) if info else None
    except Exception:  # an unreadable config is reported by the config section, not fatal here
        return None


# -- sections ------------------------------------------------------------------------------------
def config_section(run_dir: Path, config: Any) -> Section:
    path = run_dir / "config.yaml"
    if not path.is_file() and config is None:
        return missing_section("Configuration", "no config.yaml in the run directory.")
    section = Section("Configuration")
    if path.is_file():
        section.blocks.append(Code(path.read_text().rstrip()))
    else:
        from refine_core.config import dump_yaml

        section.blocks += [
            Text("config.yaml is missing; this is the config stored in the newest checkpoint."),
            Code(dump_yaml(config).rstrip()),
        ]
    state = _read_json(run_dir / "run_state.json")
    if isinstance(state, dict):
        stages = state.get("stages", state)
        rows = [[name, cell(value.get("status")), cell(value.get("summary"))] if isinstance(value, dict)
                else [name, cell(value), "—"] for name, value in stages.items()]
        section.blocks += [Text("Stage status (run_state.json):"), Table(["stage", "status", "summary"],
                                                                         rows)]
    return section


def data_section(run_dir: Path, config: Any) -> Section:
    section = Section("Dataset and annotations")
    if config is not None:
        options = ", ".join(f"{k}={v}" for k, v in config.dataset.options.items()) or "defaults"
        section.blocks.append(Table(["setting", "value"], [
            ["dataset", config.dataset.name], ["dataset options", options],
            ["held-out fraction (data.val_fraction)", cell(config.data.val_fraction)],
            ["teacher", config.teacher.name], ["annotation strategy", config.annotate.strategy]]))
    plans = _read_json(run_dir / "annotations" / "plans.json")
    if isinstance(plans, dict):  # annotate.task=decomposition: VLM2VLA plans instead of step reasoning
        counts = plans.get("counts", {})
        section.blocks.append(Table(["trajectory plans", "value"], [
            ["dataset", f"{plans.get('dataset', '—')} ({plans.get('dataset_identity', '—')})"],
            ["teacher", plans.get("teacher", "—")],
            *[[f"episodes {key}", cell(counts.get(key))] for key in ("planned", "rejected", "resumed")],
            ["cost of the last run's answers (USD)", f"{plans.get('cost_usd') or 0.0:.4f}"]]))
        for episode, reason in list((plans.get("rejected") or {}).items())[:5]:
            section.blocks.append(Text(f"rejected {episode}: {reason}"))
        return section
    manifest = _read_json(run_dir / "annotations" / "manifest.json")
    if not isinstance(manifest, dict):
        section.blocks.append(Text("Missing: annotations have not been made (no annotations/manifest.json)."))
        section.missing = True
        return section
    counts = manifest.get("counts", {})
    rows = [["dataset", f"{manifest.get('dataset', '—')} ({manifest.get('dataset_identity', '—')})"],
            ["teacher", manifest.get("teacher", "—")],
            ["episodes annotated", cell(len(manifest.get("episodes", {})))]]
    rows += [[f"steps {key}" if key in ("planned", "annotated", "failed", "retried", "cached")
              else key.replace("_", " "), cell(counts.get(key))] for key in ANNOTATION_COUNTS]
    cost = manifest.get("cost_usd")
    rows.append(["cost (USD)", "—" if cost is None else f"{cost:.4f}"])
    section.blocks.append(Table(["annotations", "value"], rows))
    if counts.get("failed"):
        section.blocks.append(Text(f"{counts['failed']} step(s) failed to annotate; training used them "
                                   f"action-only or skipped them (data.missing_annotation)."))
    return section


def training_section(run_dir: Path, report_dir: Path) -> Section:
    from refine_core.training.checkpoint import list_checkpoints

    from refine_core.report.plots import training_curves

    records = _read_jsonl(run_dir / "train" / "metrics.jsonl")
    if not records:
        return missing_section("Training", "training has not run (no train/metrics.jsonl).")
    figure = training_curves(records, report_dir / "training_curves.png")
    last = records[-1]
    keys = [k for k in ("step", "loss", "action_loss", "reasoning_loss", "action_accuracy",
                        "reasoning_accuracy",
                        "action_l1", "lr", "samples_per_s") if k in last]
    checkpoints = [p.name for _, p in list_checkpoints(run_dir / "train")]
    return Section("Training", [
        Figure(figure, "Loss, action loss, reasoning loss and action token accuracy on the training batches "
                       "(teacher-forced) against the optimizer step."),
        Text(f"Last logged step ({len(records)} records):"),
        Table(keys, [[cell(last.get(k)) for k in keys]]),
        Text(f"Checkpoints kept: {', '.join(checkpoints) or 'none'}."),
    ])


def evaluation_section(run_dir: Path) -> Section:
    summary = _read_json(run_dir / "eval" / "summary.json")
    if not isinstance(summary, dict):
        return missing_section("Evaluation", "evaluation has not run (no eval/summary.json).")
    if summary.get("benchmark") == "retention":  # not held-out action metrics: its own section shows it
        return Section("Evaluation", [Text("The evaluation stage ran the retention benchmark: see Knowledge "
                                           "retention.")])
    chance = summary.get("action_token_chance")
    teacher_forced = Table(["teacher-forced on held-out episodes", "value", "chance"], [
        ["action token accuracy", cell(summary.get("action_token_accuracy")), cell(chance)],
        ["reasoning token accuracy", cell(summary.get("reasoning_token_accuracy")), "—"]])
    modes = [m for m in ("with_reasoning", "without_reasoning") if isinstance(summary.get(m), dict)]
    rows = []
    for key, label in (("predictions", "predictions"), ("decode_failure_rate", "decode failure rate"),
                       ("forced_rate", "action span forced after the reasoning"),
                       ("l1_mean", "L1, mean over translation + rotation"),
                       ("gripper_accuracy", "gripper accuracy"),
                       ("l1_per_dim", "L1 per dimension (x y z roll pitch yaw g)")):
        rows.append([label] + [cell(summary[m].get(key)) for m in modes])
    free = Table(["free-running"] + [m.replace("_", " ") for m in modes], rows)
    blocks = [Text(f"{summary.get('episodes', '—')} held-out episode(s), {summary.get('steps', '—')} steps. "
                   f"Chance for an action token is one over the number of action tokens."), teacher_forced]
    if modes:
        blocks.append(free)
        blocks += [
            Text(f"{m.replace('_', ' ')}: {summary[m]['note']}") for m in modes if summary[m].get("note")
        ]
    quality = summary.get("reasoning_quality")
    if isinstance(quality, dict):
        blocks += reasoning_quality_blocks(quality)
    # aggregates of another benchmark (or added later) are listed rather than dropped
    shown = {"episodes", "steps", "action_token_accuracy", "reasoning_token_accuracy", "action_token_chance",
             "reasoning_quality", *modes}
    others = [
        [key, cell(value)]
        for key, value in summary.items()
        if key not in shown and not isinstance(value, dict)
    ]
    if others:
        blocks.append(Table(["other aggregates", "value"], others))
    return Section("Evaluation", blocks)


def reasoning_quality_blocks(quality: dict[str, Any]) -> list[Any]:
    """The free-running reasoning against the teacher's, per section (offline benchmark)."""
    from refine_core.report.closed_loop_section import rate_with_interval

    rows = [[name.replace("_", " "),
             rate_with_interval(stats.get("exact_match"), stats.get("exact_match_ci95")),
             cell(stats.get("token_f1"), 3)] for name, stats in quality.get("sections", {}).items()]
    rows.append(["all sections", rate_with_interval(quality.get("all_sections_exact"),
                                                    quality.get("all_sections_exact_ci95")),
                 cell(quality.get("mean_token_f1"), 3)])
    phase = rate_with_interval(quality.get("phase_accuracy"), quality.get("phase_accuracy_ci95"))
    return [Text(f"Free-running reasoning against the teacher's on {quality.get('steps')} held-out steps "
                 f"(reasoning the run's format could read: {cell(quality.get('parsed_rate'), 3)}; "
                 f"sub-action names the teacher's phase: {phase}):"),
            Table(["section", "exact match % [95% CI]", "token F1"], rows)]


def attention_section(run_dir: Path, report_dir: Path, episodes: int, registry: Any) -> Section:
    from refine_core.training.checkpoint import latest_checkpoint

    from refine_core.report.attention_objects import object_table, reading, report_attention
    from refine_core.report.plots import attention_figure

    if latest_checkpoint(run_dir / "train") is None:
        return missing_section("Attention maps", "no trained checkpoint (train/checkpoints/step-*).")
    try:  # shared with any other section quoting the numbers (attention_object_numbers)
        comparison = report_attention(run_dir, episodes=episodes, registry=registry)
    except Exception as exc:  # the report still renders; the section says what went wrong
        return Section("Attention maps", [Text(f"Attention maps could not be drawn: {_problem(exc)}")],
                       missing=True)
    figure = attention_figure(comparison, report_dir / "attention.png")
    blocks = [Figure(figure, f"Attention from the action tokens to the image patches, base model vs "
                             f"{comparison.checkpoint.name} (top-{comparison.top_k} heads by image mass, "
                             f"fused by {comparison.fusion}, min-max normalised). 'image share': the "
                             "attention mass "
                             "those heads spend on the image; 'focus': the share of the fused map held by "
                             "its "
                             f"10% most attended patches (0.1 = uniform).")]
    blocks += [Text(note) for note in comparison.notes]
    objects = comparison.objects
    if objects is not None:
        which = "held-out" if objects.held_out else "training"
        blocks += [
            Text(f"Attention measured: the share of the tokens' image attention (top-{objects.top_k} heads, "
                 f"fused by {objects.fusion}: attention mass, not normalised) on the patches that show the "
                 f"instruction's target and destination objects, on {which} frames; chance is the share a "
                 f"uniform map would put on those patches. Intervals: {objects.interval}; the difference is "
                 f"paired on the same frames. Measured in {objects.seconds:.1f} s (model loading not "
                 f"counted)."),
            object_table(objects),
        ]
        blocks += [Text(reading(share, objects.tuned_label)) for share in objects.shares.values()]
        blocks += [Text(note) for note in objects.notes]
    return Section("Attention maps", blocks)


def _frames(config: Any, keys: list[str], registry: Any) -> tuple[dict[str, Any], str | None]:
    """Primary frames of the given "<episode_id>/<step>" keys, read from the run's dataset."""
    wanted = {}
    for key in keys:
        episode_id, _, step = key.rpartition("/")
        wanted.setdefault(episode_id, set()).add(int(step))
    found: dict[str, Any] = {}
    try:
        dataset = registry.build("dataset", config.dataset.name, config.dataset.options)
        for episode in dataset.episodes("train"):
            for step in episode.steps:
                if step.step_index in wanted.get(episode.episode_id, ()):
                    found[f"{episode.episode_id}/{step.step_index}"] = step.images[step.primary_camera]
            if len(found) == len(keys):
                break
    except Exception as exc:  # frames are a nicety: the texts are still shown
        return found, _problem(exc)
    return found, None


def examples_section(run_dir: Path, report_dir: Path, config: Any, registry: Any) -> Section:
    from refine_core.data.annotation_set import AnnotationSet

    annotations = None
    if (run_dir / "annotations" / "manifest.json").is_file():
        try:
            annotations = AnnotationSet.load(run_dir / "annotations")
            if config is not None:  # the teacher's text as the model was trained on it
                annotations = annotations.with_format(config.train.reasoning_format)
        except Exception:  # reported by the data section
            annotations = None
    chosen: dict[str, list[tuple[str, str]]] = {}
    for record in _read_jsonl(run_dir / "eval" / "results.jsonl"):
        example = (record.get("with_reasoning") or {}).get("example")
        if example and len(chosen) < EXAMPLES:
            chosen[example["step"]] = [("instruction", record.get("instruction", "")),
                                       ("model (free-running, held-out)", example["reasoning"])]
    if annotations is not None:
        for key, texts in chosen.items():
            episode_id, _, step = key.rpartition("/")
            teacher = annotations.text(episode_id, int(step))
            if teacher:
                texts.append((f"teacher ({annotations.teacher})", teacher))
        by_episode: dict[str, list[int]] = {}
        for episode_id, step in sorted(annotations.texts):
            by_episode.setdefault(episode_id, []).append(step)
        for episode_id, steps in by_episode.items():  # one step per episode, from its middle: variety
            if len(chosen) >= EXAMPLES:
                break
            step = steps[len(steps) // 2]
            chosen.setdefault(f"{episode_id}/{step}", [(f"teacher ({annotations.teacher})",
                                                        annotations.text(episode_id, step))])
    if not chosen:
        return missing_section("Example reasoning",
                               "no reasoning texts (no annotations, no evaluation examples).")
    frames, problem = _frames(config, list(chosen), registry) if config is not None else ({}, "no config")
    blocks: list = []
    for index, (key, texts) in enumerate(chosen.items(), start=1):
        image = None
        if key in frames:
            from matplotlib.image import imsave

            image = report_dir / f"example-{index}.png"
            imsave(image, frames[key])
        blocks.append(Example(image, key, texts))
    if problem:
        blocks.append(Text(f"Frames could not be read from the dataset: {problem}"))
    return Section("Example reasoning", blocks)
