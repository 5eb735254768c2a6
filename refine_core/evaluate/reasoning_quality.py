"""How close is the reasoning a model writes by itself to its teacher's, section by section?

For one step, both texts are read with the run's reasoning format (`ReasoningFormat.parse`) and
compared per section — observation, situation analysis, spatial reasoning, the logical steps
(joined in order) and the sub-action:
- exact match: equal after lower-casing and collapsing whitespace and punctuation;
- token F1 (SQuAD's): the harmonic mean of precision and recall of the word multisets.
A generated text the format cannot read scores 0 in every section and counts as unparsed.
The phase check asks whether the sub-action names the teacher's phase: the words before its ":"
("approach: move left" → "approach"), as Embodied-CoT's and refine's scripted sub-actions write it;
steps whose teacher sub-action has no such prefix are left out of it.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

SECTIONS = ("observation", "situation_analysis", "spatial_reasoning", "logical_steps", "sub_action")
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def words(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped ("0.06 m," → ["0.06", "m"])."""
    return _WORD.findall(text.lower())


def token_f1(predicted: str, reference: str) -> float:
    """SQuAD token F1 over word multisets; 1.0 when both are empty."""
    guess, truth = Counter(words(predicted)), Counter(words(reference))
    if not guess and not truth:
        return 1.0
    common = sum((guess & truth).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(guess.values()), common / sum(truth.values())
    return 2 * precision * recall / (precision + recall)


def _sections(reasoning: Any) -> dict[str, str]:
    plan = reasoning.task_planning
    return {"observation": reasoning.observation, "situation_analysis": reasoning.situation_analysis,
            "spatial_reasoning": reasoning.spatial_reasoning, "logical_steps": " ; ".join(plan.logical_steps),
            "sub_action": plan.sub_action}


def phase_of(sub_action: str) -> str | None:
    """The phase a sub-action names before its ":" ("lift: move up" → "lift"), or None."""
    head, colon, _ = sub_action.partition(":")
    return (" ".join(words(head)) or None) if colon else None


def compare_reasoning(predicted: str | None, reference: str, reasoning_format: Any) -> dict[str, Any]:
    """Scores of one step: {"parsed", "exact": {section: bool}, "f1": {section: float},
    "phase": bool or None}."""
    truth = _sections(reasoning_format.parse(reference))
    try:
        guess = _sections(reasoning_format.parse(predicted or ""))
    except ValueError:
        guess = None
    expected_phase = phase_of(truth["sub_action"])
    if guess is None:
        return {"parsed": False, "exact": {s: False for s in SECTIONS}, "f1": {s: 0.0 for s in SECTIONS},
                "phase": False if expected_phase else None}
    return {
        "parsed": True,
        "exact": {s: words(guess[s]) == words(truth[s]) for s in SECTIONS},
        "f1": {s: token_f1(guess[s], truth[s]) for s in SECTIONS},
        "phase": (phase_of(guess["sub_action"]) == expected_phase) if expected_phase else None,
    }


def summarise_reasoning(scores: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Per section: exact-match rate with its Wilson 95% interval and mean token F1; parse rate and
    phase accuracy (with interval) over the steps. None without steps."""
    from refine_core.evaluate.closed_loop import wilson_interval

    scores = list(scores)
    if not scores:
        return None
    n = len(scores)
    sections = {}
    for s in SECTIONS:
        hits = sum(r["exact"][s] for r in scores)
        sections[s] = {"exact_match": hits / n, "exact_match_ci95": list(wilson_interval(hits, n)),
                       "token_f1": sum(r["f1"][s] for r in scores) / n}
    phased = [r["phase"] for r in scores if r["phase"] is not None]
    right = sum(phased)
    all_exact = sum(all(r["exact"].values()) for r in scores)
    return {
        "steps": n, "parsed_rate": sum(r["parsed"] for r in scores) / n,
        "sections": sections,
        "all_sections_exact": all_exact / n, "all_sections_exact_ci95": list(wilson_interval(all_exact, n)),
        "mean_token_f1": sum(v["token_f1"] for v in sections.values()) / len(SECTIONS),
        "phase_accuracy": right / len(phased) if phased else None,
        "phase_accuracy_ci95": list(wilson_interval(right, len(phased))) if phased else None,
        "phase_steps": len(phased),
    }
