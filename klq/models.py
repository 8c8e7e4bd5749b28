"""Loading models and running the forward passes the trainer needs.

Every model comes through `from_pretrained` (hub id or local HF directory) with `trust_remote_code=False`:
policy and reference as causal LMs, reward and value as sequence-classification models with a scalar
`score` head. Sequences are laid out as [left-padded prompt (P) | response (T)] so that the prompt ends at
the same column for every row; position ids come from the attention mask so padding never shifts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from klq.config import ModelConfig
from klq.losses import logprobs_and_entropy
from klq.tasks.model_names import resolve_model_path

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (prompts are left-padded) and a pad token (EOS if it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name!r} has no EOS token; responses could never end")
    return tokenizer


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (policy, reference, value and reward), as in TRL and the KLQ code."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_causal_lm(name: str, dtype: torch.dtype) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name), dtype=dtype, trust_remote_code=False)
    disable_dropout(model)
    return model


def load_scorer(name: str, dtype: torch.dtype, pad_token_id: int | None = None) -> PreTrainedModel:
    """A sequence-classification model with one output (reward or value). From a causal-LM checkpoint this
    keeps the backbone and adds a freshly initialised `score` head (value_init = "policy")."""
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(name), num_labels=1, dtype=dtype, trust_remote_code=False
    )
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if not hasattr(model, "score"):
        raise ValueError(f"{name!r}: sequence-classification models need a `score` head")
    disable_dropout(model)
    return model


class ModelLoadError(RuntimeError):
    """A configured model could not be loaded; the message names the config field and the model."""


def _load(field: str, name: str, loader, *args, **kwargs):
    try:
        return loader(name, *args, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        if name.startswith(("/", ".", "~")) and not Path(name).expanduser().exists():
            reason = "no such directory"
        else:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        raise ModelLoadError(
            f"{field} = {name!r} could not be loaded ({reason}). Give a local directory in HF layout "
            "(config.json and weights) or a hub id reachable from the worker."
        ) from err


@dataclass
class Models:
    tokenizer: PreTrainedTokenizerBase
    policy: PreTrainedModel
    reference: PreTrainedModel
    value: ValueModel | None  # None: the algorithm needs no value model (RLOO, GRPO), so none is loaded
    reward: PreTrainedModel
    reward_tokenizer: PreTrainedTokenizerBase
    same_tokenizer: bool  # reward model reads the policy's token ids directly (no re-tokenising)


def load_models(cfg: ModelConfig, device: torch.device, policy_dir: str | None = None,
                value_dir: str | None = None, with_value: bool = True) -> Models:
    """Load the four models (three with `with_value` False: no value network is built, for algorithms
    without one). policy_dir / value_dir override the configured ones (resuming a checkpoint).

    The frozen reference and reward models run in the configured dtype (bf16 on GPU); the trained policy
    and value keep float32 master weights, and bf16 compute comes from mixed-precision autocast, so that
    small AdamW updates are not rounded away.
    """
    frozen_dtype = resolve_dtype(cfg.dtype, device)
    dtype = torch.float32
    tokenizer = _load("model.policy", cfg.policy, load_tokenizer)
    policy = _load("model.policy", policy_dir or cfg.policy, load_causal_lm, dtype)
    reference = _load("model.reference", cfg.reference or cfg.policy, load_causal_lm, frozen_dtype)
    reward_tokenizer = _load("model.reward", cfg.reward, load_tokenizer)
    reward = _load("model.reward", cfg.reward, load_scorer, frozen_dtype, reward_tokenizer.pad_token_id)
    value = None
    if with_value:
        value_field = "model.value" if cfg.value else f"model.{cfg.value_init} (value_init)"
        value_source = value_dir or cfg.value or (cfg.reward if cfg.value_init == "reward" else cfg.policy)
        value = _load(value_field, value_source, load_scorer, dtype, tokenizer.pad_token_id)
        value.train()
    for frozen in (reference, reward):
        frozen.requires_grad_(False).eval()
    policy.train()
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if value is not None:
            value.gradient_checkpointing_enable()
    same = tokenizer.get_vocab() == reward_tokenizer.get_vocab()
    return Models(tokenizer, policy, reference, None if value is None else ValueModel(value), reward,
                  reward_tokenizer, same)


def position_ids_from(mask: Tensor) -> Tensor:
    """Positions counted over attended tokens only, so left padding does not shift them. (B, S) -> (B, S)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
    """Logits that predict the T response tokens: those at the T positions before each response token.

    input_ids, attention_mask: (B, P + T) -> (B, T, V). Only those T positions go through the LM head, and
    the logits come back as they are (no slice of a larger tensor, whose backward would allocate and
    fill a (B, T + 1, V) gradient).
    """
    seq = input_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        logits_to_keep=torch.arange(seq - response_length - 1, seq - 1, device=input_ids.device),
        use_cache=False,
    )
    return out.logits


def response_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_ids: Tensor,
                      temperature: float) -> tuple[Tensor, Tensor]:
    """log pi(a_t | s_t) under softmax(logits / temperature) and the entropy of that distribution at the T
    response positions: `response_logits` and `losses.logprobs_and_entropy` (only the log-probs carry a
    gradient). input_ids, attention_mask: (B, P + T); response_ids: (B, T) -> ((B, T), (B, T)).

    The (B, T, V) logits never leave this function, so the fused op's backward may write the gradient
    into their buffer (overwrite_logits) instead of allocating another (B, T, V) tensor."""
    logits = response_logits(model, input_ids, attention_mask, response_ids.shape[1])
    return logprobs_and_entropy(logits, response_ids, temperature, overwrite_logits=True)


def _backbone_hidden(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    backbone = getattr(model, model.base_model_prefix)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state


class ValueModel(nn.Module):
    """Per-token values V(s_t) from a sequence-classification model's backbone and `score` head.

    A module of its own so that data-parallel wrappers see the value forward (and sync its gradients).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
        """input_ids, attention_mask: (B, P + T) -> (B, T) float32: V(s_t) read at the token before a_t."""
        hidden = _backbone_hidden(self.model, input_ids, attention_mask)
        start = input_ids.shape[1] - response_length - 1
        return self.model.score(hidden[:, start:-1]).squeeze(-1).float()


def sequence_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Score head at the last attended token of each row (left or right padding). (B, S) -> (B,) float32."""
    hidden = _backbone_hidden(model, input_ids, attention_mask)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * columns).argmax(-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return model.score(hidden[rows, last]).squeeze(-1).float()
