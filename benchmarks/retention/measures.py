"""Model-agnostic measures of what fine-tuning kept: answer-option scoring and next-token drift.

Both go through `Backbone.collate`, the one batch format every backbone accepts: the question (or
a neutral instruction) is the prompt, the text to score is placed where training puts reasoning
(after the prompt, before the action tokens), and the action chunk is a dummy of zeros that no
measure reads. Causal attention over that suffix means the dummy actions after the text cannot
change its scores. Text-only prompts are paired with a uniform grey frame, since a VLM needs pixels.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import numpy as np

NEUTRAL_IMAGE = np.full((224, 224, 3), 128, dtype=np.uint8)
NEUTRAL_INSTRUCTION = ""

# Held-out general text (none of it is robot-task text), teacher-forced for the drift measure.
GENERAL_PROMPTS = (
    "The capital of France is Paris, and the capital of Japan is Tokyo.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A triangle has three sides and a square has four.",
    "The sun rises in the east and sets in the west.",
    "She opened the window because the room was too warm.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "Two plus three equals five, and ten minus four equals six.",
    "The library closes at eight o'clock on weekdays.",
    "Bees collect nectar from flowers to make honey.",
    "A violin has four strings and is played with a bow.",
    "Mount Everest is the highest mountain above sea level.",
    "He poured a cup of tea and sat down to read the newspaper.",
)


@contextlib.contextmanager
def on_accelerator(backbone: Any):
    """Eval mode, on the GPU when there is one; restores the device and mode afterwards."""
    import torch

    model = backbone.model
    device, training = next(model.parameters()).device, model.training
    if torch.cuda.is_available() and device.type != "cuda":
        model.to("cuda")
    model.eval()
    try:
        with torch.no_grad():
            yield backbone
    finally:
        model.to(device)
        model.train(training)


def _batch(backbone: Any, image: np.ndarray, instruction: str, texts: Sequence[str]):
    """(collated batch, [(start, end)] of each text's tokens in input_ids)."""
    from refine_core import TrainingSample

    chunk = max(1, int(getattr(backbone.codec, "chunk_size", 1)))
    samples = [TrainingSample(images={"frame": image}, primary_camera="frame", instruction=instruction,
                              actions=np.zeros((chunk, 7), np.float32), reasoning=text) for text in texts]
    batch = backbone.collate(samples, order="reason_then_act")
    spans = []
    for row, text in enumerate(texts):
        ids = backbone.reasoning_ids(text)
        start = int((batch["labels"][row] != -100).nonzero()[0])  # the first supervised token
        if batch["input_ids"][row, start:start + len(ids)].tolist() != list(ids) or start < 1:
            raise ValueError(f"{backbone.name}: the text {text!r} is not where training puts reasoning")
        spans.append((start, start + len(ids)))
    return batch, spans


def _log_probs(backbone: Any, batch: dict[str, Any]):
    import torch

    with torch.no_grad():  # measures only: no graph, whoever calls
        return torch.log_softmax(backbone.forward(batch).float(), dim=-1)


def option_log_likelihoods(backbone: Any, image: np.ndarray, question: str,
                           candidates: Sequence[str]) -> list[float]:
    """Summed log-probability of each candidate answer after the question (one forward pass)."""
    batch, spans = _batch(backbone, image, question, candidates)
    log_probs = _log_probs(backbone, batch)
    ids = batch["input_ids"].to(log_probs.device)
    # the logits at position t predict the token at t + 1
    return [float(log_probs[row, start - 1:end - 1].gather(-1, ids[row, start:end, None]).sum())
            for row, (start, end) in enumerate(spans)]


def next_token_log_probs(backbone: Any, texts: Sequence[str] = GENERAL_PROMPTS,
                         image: np.ndarray = NEUTRAL_IMAGE, instruction: str = NEUTRAL_INSTRUCTION) -> list:
    """Per text, the model's log-distribution [tokens, vocabulary] over each of its next tokens
    (teacher-forced), float32 on the CPU. One text per forward pass bounds memory for big vocabularies."""
    out = []
    for text in texts:
        batch, [(start, end)] = _batch(backbone, image, instruction, [text])
        out.append(_log_probs(backbone, batch)[0, start - 1:end - 1].cpu())
    return out


def kl_per_text(base: Sequence, tuned: Sequence) -> list[float]:
    """KL(base ‖ tuned) per text: Σ_v p_base(v) (log p_base(v) − log p_tuned(v)) averaged over positions."""
    out = []
    for b, t in zip(base, tuned):
        if b.shape != t.shape:
            raise ValueError(f"the models' next-token distributions differ in shape: {tuple(b.shape)} vs "
                             f"{tuple(t.shape)} (another tokenizer or vocabulary size)")
        per_position = (b.exp() * (b - t)).sum(-1).clamp_min(0.0)  # clamp: float rounding below 0
        out.append(float(per_position.mean()))
    return out


def drift(base: Any, tuned: Any, texts: Sequence[str] = GENERAL_PROMPTS) -> list[float]:
    """KL(base ‖ tuned) per text for two backbones (one on the accelerator at a time)."""
    with on_accelerator(tuned):
        tuned_lp = next_token_log_probs(tuned, texts)
    with on_accelerator(base):
        base_lp = next_token_log_probs(base, texts)
    return kl_per_text(base_lp, tuned_lp)


def bootstrap_mean_interval(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling the prompts)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
