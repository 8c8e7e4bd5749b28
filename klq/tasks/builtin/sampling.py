"""The built-in task's tiny GPT-2 models: their config, padding, and sampling responses from them
(torch and transformers are imported inside the functions)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from klq.tasks.builtin.gold import PROMPT_TEMPLATE, RESPONSE_LENGTH
from klq.tasks.builtin.vocab import _Vocab

if TYPE_CHECKING:  # pragma: no cover
    import torch


def tiny_gpt2_config(
    vocab_size: int, pad_id: int, bos_id: int, eos_id: int, n_positions: int = 64, **extra: Any
):
    """2 layers, 64 dims, 4 heads, 64 positions (unless told), every dropout probability 0, GPT-2's tanh
    GELU."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        activation_function="gelu_pytorch_tanh",  # = GPT-2's gelu_new up to 1e-7, several times faster
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **extra,
    )


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def sample_responses(
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    batch_size: int = 1024,
) -> list[list[int]]:
    """Sample responses to equal-length prompts ([N, P] ids, no padding) from a causal LM: temperature
    sampling (0 = greedy), no top-k/top-p; each response is cut after its first EOS (EOS kept)."""
    import inspect

    import torch

    # Incremental decoding with the model's KV cache (the keyword is `cache` in recent transformers,
    # `past_key_values` before); without either, the whole prefix is recomputed at each step.
    params = inspect.signature(model.forward).parameters
    cache_kw = next((k for k in ("cache", "past_key_values") if k in params), None)
    out: list[list[int]] = []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, prompt_ids.shape[0], batch_size):
            ids = prompt_ids[start : start + batch_size]
            done = torch.zeros(ids.shape[0], dtype=torch.bool)
            cache = None
            for _ in range(max_new_tokens):
                mask = torch.ones_like(ids)
                if cache_kw is None:
                    result = model(input_ids=ids, attention_mask=mask, use_cache=False)
                else:
                    step_ids = ids if cache is None else ids[:, -1:]
                    result = model(
                        input_ids=step_ids, attention_mask=mask, use_cache=True, **{cache_kw: cache}
                    )
                    cache = getattr(result, cache_kw, None)
                    if cache is None:
                        cache = getattr(result, "past_key_values", None)
                logits = result.logits[:, -1, :].float()
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
                else:
                    nxt = logits.argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                done |= nxt == eos_id
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                if bool(done.all()):
                    break
            for row in ids[:, prompt_ids.shape[1] :].tolist():
                resp = []
                for t in row:
                    if t == pad_id:
                        break
                    resp.append(t)
                    if t == eos_id:
                        break
                out.append(resp)
    return out


def _sample_texts(model, vocab: _Vocab, subjects: list[str], gen) -> list[tuple[list[int], str]]:
    """(response ids incl. EOS if any, decoded text) sampled from `model` for prompts on `subjects`."""
    import torch

    prompt_ids = torch.tensor([vocab.encode(PROMPT_TEMPLATE.format(subject=s).split()) for s in subjects])
    resps = sample_responses(model, prompt_ids, RESPONSE_LENGTH, vocab.eos, vocab.pad, generator=gen)
    return [(r, vocab.text(r)) for r in resps]
