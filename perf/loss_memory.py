"""P1 -- extra peak memory of the reasoning-aware loss vs ReFineVLA Algorithm 2.

Run: ``python perf/loss_memory.py`` (about 1 minute, ~6 GB RAM at peak). Each implementation runs
in its own fresh subprocess (``--worker NAME``) on identical inputs: vocab 257,216 (PaliGemma),
B=2, T=512, float32 logits as a leaf tensor, ~20% action labels, a 64-token unsupervised prompt
plus ~5% scattered -100 labels.

What is measured, per worker (Linux /proc/self/status, kB, read as MB = 2**20 bytes):
    baseline = VmRSS after the logits exist *and* a second touched buffer of the same size
               (standing in for their gradient) exists; that buffer is then freed.
    peak     = VmHWM (peak RSS of the process) after forward + backward.
    extra    = peak - baseline: memory beyond the input logits and one logits-sized gradient.
Both sides end with exactly one logits-sized ``logits.grad``, so the comparison is fair. Code
paths are warmed up on tiny inputs first, so one-off library loading is not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VOCAB, BATCH, SEQ, PROMPT, LAMBDA_R, SEED = 257_216, 2, 512, 64, 0.3, 0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _reference(logits, labels, action_mask, lambda_r, contiguous_shift):
    """Algorithm 2: shift the logits, two masked cross-entropies. ``contiguous_shift`` flattens
    the shifted logits (the usual HF-style ``logits[:, :-1].contiguous().view(-1, V)``); without
    it the masks index the shifted view directly, which skips that one full copy."""
    import torch.nn.functional as F

    shifted = logits[:, :-1, :]
    if contiguous_shift:
        shifted = shifted.contiguous().view(-1, logits.shape[-1])
    target = labels[:, 1:]
    is_action = action_mask[:, 1:]
    supervised = target != -100
    if contiguous_shift:
        target, is_action = target.reshape(-1), is_action.reshape(-1)
        supervised = supervised.reshape(-1)
    act, rea = supervised & is_action, supervised & ~is_action
    action_loss = F.cross_entropy(shifted[act], target[act])
    reasoning_loss = F.cross_entropy(shifted[rea], target[rea])
    return action_loss + lambda_r * reasoning_loss, action_loss, reasoning_loss


def _run_loss(name, logits, labels, action_mask):
    if name == "ours":
        from refine_core.loss import reasoning_aware_loss

        out = reasoning_aware_loss(logits, labels, action_mask, lambda_r=LAMBDA_R)
        return out.loss, out.action_loss, out.reasoning_loss
    return _reference(logits, labels, action_mask, LAMBDA_R, contiguous_shift=name == "reference")


def _inputs(torch, batch, seq, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.empty(batch, seq, vocab).normal_(generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[:, :PROMPT] = -100  # prompt / image tokens are not supervised
    labels[torch.rand(batch, seq, generator=g) < 0.05] = -100  # padding scattered through
    action_mask = torch.rand(batch, seq, generator=g) < 0.2
    return logits, labels, action_mask


def worker(name: str) -> dict:
    import torch

    torch.set_num_threads(1)
    # Warm-up on tiny inputs so kernel/library loading is not counted as "extra".
    small = _inputs(torch, 2, PROMPT + 16, 64, SEED + 1)
    small[0].requires_grad_()
    _run_loss(name, *small)[0].backward()
    del small

    logits, labels, action_mask = _inputs(torch, BATCH, SEQ, VOCAB, SEED)
    logits.requires_grad_()
    logits_only_kb = _status_kb("VmRSS")
    stand_in_grad = torch.ones_like(logits)  # touched: counts like the real gradient will
    baseline_kb = _status_kb("VmRSS")
    del stand_in_grad
    phases = _reset_peak()  # lets the forward's own peak be read (informative column)

    start = time.perf_counter()
    loss, action_loss, reasoning_loss = _run_loss(name, logits, labels, action_mask)
    forward_peak_kb = _status_kb("VmHWM")
    loss.backward()
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    assert logits.grad is not None and logits.grad.shape == logits.shape
    return {
        "name": name,
        "extra_mb": (peak_kb - baseline_kb) / 1024,
        "baseline_mb": baseline_kb / 1024,
        # forward peak above the logits alone (no gradient exists yet); None if unmeasurable
        "forward_over_logits_mb": (forward_peak_kb - logits_only_kb) / 1024 if phases else None,
        "peak_mb": peak_kb / 1024,
        "logits_mb": logits.numel() * logits.element_size() / 2**20,
        "seconds": seconds,
        "loss": loss.item(),
        "action_loss": action_loss.item(),
        "reasoning_loss": reasoning_loss.item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["ours", "reference", "reference_view"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = {}
    for name in ("ours", "reference", "reference_view"):
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", name],
            capture_output=True, text=True, env=env, check=False,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"worker {name} failed with exit code {proc.returncode}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    ours = results["ours"]
    print(f"vocab={VOCAB} B={BATCH} T={SEQ} float32; logits = {ours['logits_mb']:.0f} MB; "
          f"extra = peak RSS after fwd+bwd - RSS(logits + one logits-sized gradient)")
    print(f"{'implementation':<16}{'extra MB':>10}{'fwd>logits MB':>15}{'peak MB':>10}"
          f"{'seconds':>9}{'loss':>14}")
    for r in results.values():
        fwd = r["forward_over_logits_mb"]
        fwd_text = f"{fwd:.1f}" if fwd is not None else "n/a"
        print(f"{r['name']:<16}{r['extra_mb']:>10.1f}{fwd_text:>15}{r['peak_mb']:>10.1f}"
              f"{r['seconds']:>9.2f}{r['loss']:>14.6f}")
    ok = True
    for ref in ("reference", "reference_view"):
        ratio = ours["extra_mb"] / results[ref]["extra_mb"]
        rel = max(
            abs(ours[k] - results[ref][k]) / max(abs(results[ref][k]), 1e-12)
            for k in ("loss", "action_loss", "reasoning_loss")
        )
        agree = rel < 1e-4
        ok &= agree and ratio <= 0.15
        print(f"ratio ours/{ref} = {ratio:.3f} (target <= 0.15); "
              f"loss values agree: {agree} (max relative diff {rel:.1e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
