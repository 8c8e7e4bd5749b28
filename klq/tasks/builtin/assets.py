"""Building the built-in task's assets: `build_assets` (under a file lock, atomically), `ensure_assets`,
their `meta.json`, and `main` (`python -m klq.tasks.builtin`)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from klq.tasks.builtin.gold import (
    PROMPT_LENGTH,
    RECOMMENDED_ROLLOUT,
    RECOMMENDED_TRAIN,
    RESPONSE_LENGTH,
    make_prompts,
)
from klq.tasks.builtin.judge_model import _judge_template_digest, _train_judge
from klq.tasks.builtin.training import _sft_quality, _train_reward, _train_sft
from klq.tasks.builtin.vocab import _Vocab, build_tokenizer
from klq.tasks.model_names import builtin_assets_dir

# Bump whenever the domain, the generator or the training recipe changes: `ensure_assets` rebuilds
# assets whose meta.json carries another version.
VERSION = 2


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(out_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(out_dir: Path, seed: int | None = None) -> bool:
    meta = read_meta(out_dir)
    if not meta or meta.get("version") != VERSION or (seed is not None and meta.get("seed") != seed):
        return False
    if (meta.get("judge") or {}).get("template_sha256") != _judge_template_digest():
        return False  # the judge was trained on another judge template
    needed = (
        "tokenizer/tokenizer.json",
        "sft/config.json",
        "reward/config.json",
        "judge/config.json",
        "prompts/train.jsonl",
    )
    return all((out_dir / p).is_file() for p in needed)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads (restored afterwards). The models are so small that one thread
    is as fast as two on an idle machine, far faster on a busy one, and the results do not depend on
    the machine's core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_assets(
    out_dir: Path | str | None = None, seed: int = 0, force: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Build the built-in task's tokenizer, SFT policy, reward model, judge and prompts into `out_dir`
    (default `klq.paths.assets_dir()/"builtin"`) and return it.

    Deterministic on CPU for a given seed (and torch build/thread count). Takes about a minute on two
    CPU cores. Skips the work when `out_dir` already holds assets of this VERSION and seed (unless
    `force`). Builds in a temporary sibling directory and renames it into place, under an exclusive
    file lock, so concurrent builders neither collide nor expose a half-written directory.
    """
    out_dir = Path(out_dir) if out_dir is not None else builtin_assets_dir()
    out_dir = out_dir.resolve()
    with _file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if not force and _is_current(out_dir, seed):
            log(f"built-in assets already present in {out_dir}")
            return out_dir
        started = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
        try:
            with _torch_threads(1):
                meta = _build_into(tmp, seed, log)
            meta["build_seconds"] = round(time.time() - started, 2)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            old = None
            if out_dir.exists():
                old = out_dir.parent / f".{out_dir.name}-old-{os.getpid()}-{int(time.time() * 1000)}"
                os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log(f"built-in assets written to {out_dir} in {meta['build_seconds']:.1f}s")
    return out_dir


def _build_into(tmp: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    import torch
    import transformers

    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vocab = _Vocab(tokenizer)
    tokenizer.save_pretrained(tmp / "tokenizer")

    t0 = time.time()
    log("building built-in task: training the SFT policy")
    sft, sft_metrics = _train_sft(vocab, seed, log)
    sft.generation_config.update(
        bos_token_id=vocab.bos, eos_token_id=vocab.eos, pad_token_id=vocab.pad, do_sample=True, top_k=0
    )
    sft_metrics.update(_sft_quality(sft, vocab, seed))
    sft_metrics["seconds"] = round(time.time() - t0, 2)
    log(f"  SFT mean gold {sft_metrics['mean_gold']:+.3f} ({sft_metrics['seconds']:.1f}s)")
    sft.save_pretrained(tmp / "sft", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "sft")

    t0 = time.time()
    log("building built-in task: training the reward model")
    rm, rm_metrics = _train_reward(vocab, sft, seed, log)
    rm_metrics["seconds"] = round(time.time() - t0, 2)
    log(
        f"  RM held-out pair accuracy {rm_metrics['pair_accuracy']:.3f}, Spearman with gold on SFT "
        f"samples {rm_metrics['sft_samples_spearman']:.3f} ({rm_metrics['seconds']:.1f}s)"
    )
    rm.save_pretrained(tmp / "reward", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "reward")

    t0, cpu0 = time.time(), time.process_time()
    log("building built-in task: training the judge")
    judge, judge_tokenizer, judge_metrics = _train_judge(vocab, sft, seed, log)
    judge_metrics["seconds"] = round(time.time() - t0, 2)
    judge_metrics["cpu_seconds"] = round(time.process_time() - cpu0, 2)
    log(
        f"  judge held-out accuracy {judge_metrics['heldout_accuracy']:.3f}, agreement with gold (both "
        f"orders) {judge_metrics['agreement_with_gold']:.3f}, position consistency "
        f"{judge_metrics['position_consistency']:.3f} ({judge_metrics['seconds']:.1f}s, "
        f"{judge_metrics['cpu_seconds']:.1f}s CPU)"
    )
    judge.save_pretrained(tmp / "judge", safe_serialization=True)
    judge_tokenizer.save_pretrained(tmp / "judge")

    train, evals = make_prompts("train", seed=seed), make_prompts("eval", seed=seed)
    _write_jsonl(tmp / "prompts" / "train.jsonl", [{"id": p.id, "prompt": p.text} for p in train])
    _write_jsonl(tmp / "prompts" / "eval.jsonl", [{"id": p.id, "prompt": p.text} for p in evals])
    return {
        "version": VERSION,
        "seed": seed,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vocab_size": len(vocab.ids),
        "prompt_length": PROMPT_LENGTH,
        "response_length": RESPONSE_LENGTH,
        "train_prompts": len(train),
        "eval_prompts": len(evals),
        "recommended_rollout": RECOMMENDED_ROLLOUT,
        "recommended_train": RECOMMENDED_TRAIN,
        "sft": sft_metrics,
        "reward": rm_metrics,
        "judge": judge_metrics,
    }


def ensure_assets(out_dir: Path | str | None = None, log: Callable[[str], None] = print) -> Path:
    """The built-in assets directory, building it first if missing or of another VERSION."""
    out_dir = Path(out_dir) if out_dir is not None else builtin_assets_dir()
    if _is_current(out_dir.resolve()):
        return out_dir.resolve()
    meta = read_meta(out_dir)
    seed = int(meta["seed"]) if meta and "seed" in meta else 0
    return build_assets(out_dir, seed=seed, force=False, log=log)


def main(argv: list[str] | None = None) -> int:
    """`python -m klq.tasks.builtin [--out DIR] [--seed N] [--force]`: build the assets."""
    import argparse

    parser = argparse.ArgumentParser(description="Build KLQ Lab's built-in offline task assets.")
    parser.add_argument("--out", type=Path, default=None, help="default: $KLQ_DATA_DIR/assets/builtin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = build_assets(args.out, seed=args.seed, force=args.force)
    meta = read_meta(out) or {}
    print(json.dumps({k: meta.get(k) for k in ("version", "seed", "build_seconds")}, indent=None))
    return 0
