"""Responses of a policy to judge, and resolving which policy a run directory means.

`generate_responses` reuses the trainer's sampling (`klq.rollout.sample`, KV cache) and truncation
(`klq.rollout.cut_responses`); it is not another sampling loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REFERENCE = "reference"
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class ResolvedPolicy:
    """A policy to generate with: its model path (HF dir, hub id or builtin:*) and tokenizer."""

    label: str  # what the user gave
    model: str
    tokenizer: str
    run_dir: Path | None = None  # the run directory it came from, if any
    description: str = ""


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "run_config.json").is_file()


def read_run_config(run_dir: str | Path):
    """The run's `RunConfig` (from run_config.json)."""
    from klq.config import RunConfig

    return RunConfig.model_validate(json.loads((Path(run_dir) / "run_config.json").read_text()))


def latest_policy_checkpoint(run_dir: str | Path) -> Path | None:
    """checkpoints/step-N/policy of the highest N that holds a saved model (temp dirs are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / "policy" / "config.json").is_file():
            steps.append((int(m.group(1)), p / "policy"))
    return max(steps)[1] if steps else None


def resolve_policy(spec: str, reference_run: str | Path | None = None) -> ResolvedPolicy:
    """What `klq judge --a/--b` accept.

    - a run directory (has run_config.json): the policy of its latest checkpoint
      (checkpoints/step-*/policy), whose tokenizer is saved beside it;
    - "reference": the reference (SFT) policy of `reference_run`: its config's model.reference, else
      model.policy (the run's starting policy), with the run's policy tokenizer;
    - anything else: a model directory, HF hub id or builtin:* name (its own tokenizer).
    """
    if spec == REFERENCE:
        if reference_run is None or not is_run_dir(reference_run):
            raise ValueError("'reference' means a run's reference (SFT) policy: give a run directory as the "
                             "other policy")
        cfg = read_run_config(reference_run)
        model = cfg.model.reference or cfg.model.policy
        return ResolvedPolicy(spec, model, cfg.model.policy, Path(reference_run),
                              f"reference of {reference_run} ({model})")
    if is_run_dir(spec):
        policy = latest_policy_checkpoint(spec)
        if policy is None:
            raise FileNotFoundError(f"run directory {spec} has no checkpoint with a policy "
                                    "(checkpoints/step-*/policy)")
        has_tokenizer = any((policy / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = str(policy) if has_tokenizer else read_run_config(spec).model.policy
        return ResolvedPolicy(spec, str(policy), tokenizer, Path(spec), f"{spec} ({policy.parent.name})")
    if Path(spec).exists() and not (Path(spec) / "config.json").is_file():
        raise FileNotFoundError(f"{spec} is neither a run directory (run_config.json) nor a model directory "
                                "(config.json)")
    return ResolvedPolicy(spec, spec, spec, None, spec)


def generate_responses(
    policy_path_or_dir: str,
    tokenizer_path: str | None,
    prompts: Sequence[str],
    response_length: int,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_sequences: Sequence[str] = (),
    dtype: str = "auto",
) -> list[str]:
    """Decoded responses of a policy to `prompts` (text exactly as the policy sees it), in order.

    policy_path_or_dir: a model (HF dir, hub id, builtin:*) or a run directory (its latest checkpoint's
    policy). tokenizer_path: None = the policy's own (a run's checkpoint saves it beside the policy).
    Greedy by default; otherwise temperature sampling (top-k / top-p optional) seeded by `seed`, without
    touching the global RNG state. Responses stop after EOS or a stop sequence (removed from the text), at
    most `response_length` tokens, decoded with special tokens skipped (as the trainer decodes them).
    """
    import torch

    from klq.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from klq.rollout import cut_responses, sample

    if response_length < 1:
        raise ValueError("response_length must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for greedy decoding)")
    resolved = resolve_policy(policy_path_or_dir)
    tokenizer = load_tokenizer(tokenizer_path or resolved.tokenizer)
    dev = resolve_device(device)
    model = load_causal_lm(resolved.model, resolve_dtype(dtype, dev)).to(dev).eval()
    texts: list[str] = []
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            response_ids, _ = sample(model, ids, mask, response_length, tokenizer.eos_token_id,
                                     tokenizer.pad_token_id, temperature=temperature, greedy=greedy,
                                     top_k=top_k, top_p=top_p)
            # The judge sees each response as the reward model scored it: without the stop sequence that ended it.
            texts += cut_responses(response_ids, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer,
                                   list(stop_sequences)).texts
    return texts
