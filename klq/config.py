"""Typed run configuration.

One `RunConfig` describes a training run completely: it is what the CLI reads from YAML/JSON, what the
backend stores as a run's config and validates on `POST /runs`, and what the worker hands to the trainer.
Defaults are the KLQ paper's (arXiv 2508.17000) and TRL's PPOTrainer's; see docs/ALGORITHMS.md.
Unknown keys are rejected (typos must not silently fall back to a default).

The algorithms are not listed here: `algorithm` is checked against the registry of klq.algorithms, and each
registered algorithm's parameter group (`klq:`, `ppo:`, ...) is a section of the config, looked up from the
registry when a config is validated (klq.algorithms imports this module; this module imports it lazily).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError, core_schema

Convention = Literal["klq-lab", "paper"]

# The numerical conventions where KLQ Lab and the KLQ authors' TRL fork differ (docs/ALGORITHMS-CONVENTIONS.md):
# dotted field -> value under `convention: paper`. A field the config sets itself keeps its value.
# "batch_size" stands for "whatever train.batch_size is": one minibatch per batch.
PAPER_CONVENTION: dict[str, Any] = {
    "terminal_slot": "after_eos",
    "klq.whiten_deltas": True,
    "klq.clipped_loss_half": False,
    "train.max_grad_norm": None,
    "train.minibatch_size": "batch_size",
    "train.lr_schedule_unit": "iteration",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _registry() -> Any:
    from klq import algorithms  # lazily: klq.algorithms imports this module

    return algorithms


def algorithm_names() -> list[str]:
    """The registered algorithms' names, in registration order (klq, ppo, then plugins)."""
    return list(_registry().ALGORITHMS)


def _or_list(names: list[str]) -> str:
    """Names as pydantic words a Literal's choices: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_algorithm(name: str) -> str:
    """``name`` if it is a registered algorithm; else a validation error listing the known ones."""
    known = algorithm_names()
    if name not in known:
        raise PydanticCustomError(
            "unknown_algorithm",
            "unknown algorithm {name}: expected {known}",
            {"name": repr(name), "known": _or_list(known)},
        )
    return name


class _RegisteredAlgorithm:
    """Annotation of a registered algorithm's name: validated against the registry when a value is, and
    shown as an enum of the names registered when a JSON schema (OpenAPI) is generated."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(check_algorithm, handler(source))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "enum": algorithm_names()}


AlgorithmName = Annotated[str, _RegisteredAlgorithm]


class TaskConfig(_Strict):
    """Where prompts come from.

    `builtin` is the offline synthetic task (no network); `tldr` and `hh` take an HF dataset id or a
    local .jsonl/.parquet file; `prompts` is a generic jsonl with a `prompt` field (and optional `id`).
    """

    name: Literal["builtin", "tldr", "hh", "prompts"] = "builtin"
    dataset: str | None = Field(None, description="HF dataset id or local .jsonl/.parquet path")
    train_split: str = "train"
    eval_split: str = "validation"
    max_prompt_length: int = Field(512, ge=1, description="prompts longer than this (in tokens) are dropped")
    num_eval_prompts: int = Field(16, ge=1, description="held-out prompts sampled at each eval interval")

    @model_validator(mode="after")
    def _dataset_needed(self) -> TaskConfig:
        if self.name == "prompts" and not self.dataset:
            raise ValueError("task.dataset is required for task 'prompts' (a .jsonl file with a 'prompt' field)")
        return self


class ModelConfig(_Strict):
    """Models by HF hub id or local directory (HF layout). `builtin:sft` / `builtin:reward` name the
    built-in task's assets. `trust_remote_code` is deliberately not a field: it is never enabled."""

    policy: str = "builtin:sft"
    reference: str | None = Field(None, description="defaults to the policy (the SFT model)")
    reward: str = "builtin:reward"
    value: str | None = Field(None, description="explicit value-model path; overrides value_init")
    value_init: Literal["reward", "policy"] = Field(
        "reward", description="initialise the value network from the reward model (TRL) or the policy"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU"
    )
    gradient_checkpointing: bool = False


class KLQParams(_Strict):
    alpha: float = Field(1.0, gt=0, le=1, description="conservative backup factor")
    loss: Literal["l2", "huber"] = "l2"
    huber_delta: float = Field(1.0, gt=0)
    value_clip: float | None = Field(None, gt=0, description="clip Q_theta to Q_old +- c")
    ratio_clip: float | None = Field(None, gt=0, description="clip log(pi/pi_ref) to old +- c inside Q")
    whiten_deltas: bool = Field(False, description="whiten the lambda-return corrections Delta over the batch")
    clipped_loss_half: bool = Field(
        True, description="0.5 * err^2 in the value/ratio-clipped variants, as in plain l2 (the fork: err^2)"
    )


class PPOParams(_Strict):
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    whiten_advantages: bool = True


class RLOOParams(_Strict):
    """RLOO (TRL RLOOTrainer): the PPO-style ratio clip; the KL (kl_coef) goes into the sequence reward."""

    cliprange: float = Field(0.2, gt=0, description="clip rho = pi/pi_old to 1 +- cliprange (TRL's 0.2)")


class GRPOParams(_Strict):
    """GRPO; defaults as TRL's GRPOConfig (epsilon 0.2, epsilon_high = epsilon, scale_rewards "group",
    loss_type "dapo" = token-level aggregation). The KL (kl_coef * k3) goes into the per-token loss."""

    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide centred rewards by the group's std, the batch's, or not at all (Dr. GRPO)"
    )
    eps_low: float = Field(0.2, gt=0, lt=1, description="clip rho below at 1 - eps_low (TRL epsilon)")
    eps_high: float = Field(0.2, gt=0, description="clip rho above at 1 + eps_high (TRL epsilon_high; DAPO 0.28)")
    loss_aggregation: Literal["grpo", "token", "dr_grpo"] = Field(
        "token", description="per-sequence means then mean (grpo), mean over all tokens (token, DAPO; TRL's "
        "default), sum / (B * rollout.response_length) (dr_grpo)"
    )


class RolloutConfig(_Strict):
    response_length: int = Field(53, ge=1, le=4096)
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0 = off")
    top_p: float = Field(1.0, gt=0, le=1)
    stop_sequences: list[str] = Field(
        default_factory=list,
        description="end a response at these (EOS always); removed from the text that is scored, judged and stored",
    )
    missing_eos_penalty: float | None = Field(None, ge=0, description="subtracted from R if no EOS")
    penalize_stop_sequences: bool = Field(
        True, description="missing_eos_penalty also for a response that ended on a stop sequence (no EOS; the fork)"
    )
    eval_temperature: float = Field(0.0, ge=0, description="0 = greedy decoding for eval samples")
    num_generations: int = Field(
        1,
        ge=1,
        description="k responses sampled per training prompt (a group; adjacent rows): train.batch_size "
        "counts responses, so an iteration has batch_size / k prompts; eval samples 1 per prompt",
    )


JudgeBackend = Literal["openai", "local_hf", "reward_model", "gold"]  # klq.judge.backends.BACKENDS
TEMPLATE_JUDGES = ("openai", "local_hf")  # the backends that read a judge prompt template


class EvalJudgeConfig(_Strict):
    """The in-training win-rate against the reference (off while `backend` is unset): at every `every`-th
    eval (and the last), a judge compares the policy's responses to the eval prompts with the reference
    (SFT) policy's responses to the same prompts, both decoded as eval decodes (`rollout.eval_temperature`),
    in both presentation orders (klq.judge, as `klq judge`). Logged as `eval/win_rate_vs_ref` (ties count
    half) with its 95% Wilson interval `eval/win_rate_vs_ref_ci_low` / `_ci_high` and the counts
    `eval/judge_wins`, `_losses`, `_ties`, `_invalid`. The judge is loaded once per run; the reference's
    responses are generated once and kept in the run directory (`eval_reference.json`, reused on resume)."""

    backend: JudgeBackend | None = Field(
        None, description="gold: the task's gold reward; reward_model: a reward model; local_hf: a local causal "
        "LM judging by answer-token log-probabilities; openai: an OpenAI-compatible endpoint "
        "(KLQ_JUDGE_BASE_URL, KLQ_JUDGE_API_KEY); unset: no judge"
    )
    model: str | None = Field(
        None, description="reward_model: the scorer (default: model.reward); local_hf: an HF causal LM "
        "(builtin:judge for the built-in task); openai: the model name (required)"
    )
    template: str | None = Field(
        None, description="openai/local_hf: a built-in template (summarisation, dialogue, generic) or a template "
        "text with {prompt}, {response_a} and {response_b}; default: by task"
    )
    every: int = Field(1, ge=1, description="judge every N-th eval (eval_interval iterations apart); the last always")
    margin: float | None = Field(
        None, ge=0, description="gold/reward_model/local_hf: a score difference up to this is a tie (default 0)"
    )

    @model_validator(mode="after")
    def _fields_of_the_backend(self) -> EvalJudgeConfig:
        if self.backend is None:
            given = [name for name in ("model", "template", "margin") if getattr(self, name) is not None]
            if given:
                raise ValueError(f"eval_judge.{given[0]} is set but eval_judge.backend is not: set a backend "
                                 "(gold, reward_model, local_hf, openai) to judge during training")
            return self
        if self.backend in TEMPLATE_JUDGES and not self.model:
            what = ("the endpoint's model name (its URL and key come from KLQ_JUDGE_BASE_URL and KLQ_JUDGE_API_KEY)"
                    if self.backend == "openai" else "an HF causal LM directory or hub id (builtin:judge)")
            raise ValueError(f"eval_judge.model is required for eval_judge.backend {self.backend!r}: {what}")
        if self.template is not None and self.backend not in TEMPLATE_JUDGES:
            raise ValueError(f"eval_judge.template is set but eval_judge.backend {self.backend!r} reads no template "
                             f"(only {' and '.join(TEMPLATE_JUDGES)} do)")
        if self.margin is not None and self.backend == "openai":
            raise ValueError("eval_judge.margin is set but eval_judge.backend 'openai' answers A or B and takes "
                             "no margin")
        if self.model is not None and self.backend == "gold":
            raise ValueError("eval_judge.model is set but eval_judge.backend 'gold' uses the task's gold reward, "
                             "no model")
        return self


class TrainConfig(_Strict):
    total_episodes: int = Field(75_000, ge=1)
    batch_size: int = Field(64, ge=1, description="rollouts per iteration (per process)")
    minibatch_size: int = Field(16, ge=1, description="rollouts per optimiser step")
    micro_batch_size: int = Field(16, ge=1, description="rollouts per forward/backward (grad accumulation)")
    num_epochs: int = Field(4, ge=1)
    learning_rate: float = Field(1.41e-5, gt=0)
    value_learning_rate: float | None = Field(None, gt=0, description="defaults to learning_rate")
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    lr_schedule_unit: Literal["update", "iteration"] = Field(
        "update", description="step the LR schedule (and count warmup_steps) per optimiser update or per iteration"
    )
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _divisible(self) -> TrainConfig:
        if self.minibatch_size > self.batch_size or self.batch_size % self.minibatch_size:
            raise ValueError(
                f"train.minibatch_size ({self.minibatch_size}) must divide train.batch_size ({self.batch_size})"
            )
        if self.micro_batch_size > self.minibatch_size or self.minibatch_size % self.micro_batch_size:
            raise ValueError(
                f"train.micro_batch_size ({self.micro_batch_size}) must divide "
                f"train.minibatch_size ({self.minibatch_size})"
            )
        return self

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_episodes // self.batch_size)


class CaptureConfig(_Strict):
    """Per-token records of samples (logp, logp_ref, k1, k3, entropy, V_old and the algorithm's own
    quantities, docs/ALGORITHMS.md "Per-token quantities"): for every held-out eval sample, and for a few
    training rollouts per iteration, taken from the tensors the rollout and the algorithm already hold."""

    train_rollouts: int = Field(
        8, ge=0, description="training rollouts recorded per iteration, token by token: the best half and the "
        "worst half of the batch by reward-model score (all of them if the batch is smaller); 0 = none"
    )
    keep_train_last: int = Field(
        10, ge=0, description="the database keeps the recorded training rollouts of the last N iterations ..."
    )
    keep_train_every: int = Field(
        10, ge=0, description="... and of every M-th iteration (0: only the last N). Eval samples are all kept; "
        "a standalone run's JSONL keeps everything"
    )


class RunConfig(_Strict):
    """A run. Besides these fields, one section per registered algorithm with parameters (``cfg.klq``,
    ``cfg.ppo``, a plugin's): extra keys are allowed only as those sections, each validated by its
    algorithm's model and filled with its defaults when left out (see ``_validate``)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str | None = Field(None, max_length=200)
    algorithm: AlgorithmName = "klq"
    convention: Convention = Field(
        "klq-lab", description="paper: the KLQ authors' fork's numerical conventions for every field not set "
        "explicitly (docs/ALGORITHMS-CONVENTIONS.md)"
    )
    terminal_slot: Literal["last_token", "after_eos"] = Field(
        "last_token", description="R and the last value at the last response token, or one slot after EOS (TRL)"
    )
    kl_coef: float = Field(
        0.05, gt=0, description="tau for KLQ; kl_coef for PPO and RLOO (KL in the reward), GRPO's beta (k3 in the loss)"
    )
    gamma: float = Field(1.0, gt=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="lambda of the lambda-returns / GAE")
    seed: int = Field(0, ge=0)
    eval_interval: int = Field(10, ge=1, description="iterations between sample records")
    checkpoint_interval: int = Field(50, ge=1, description="iterations between checkpoints")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    num_gpus: int = Field(1, ge=1, le=64, description="GPUs for this run on a GPU worker (>1: accelerate launch)")
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval_judge: EvalJudgeConfig = Field(default_factory=EvalJudgeConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data: Any, handler: Any) -> RunConfig:
        """Fill the convention's values into the fields the input leaves out (the stored config is
        explicit); validate the fields, and each registered algorithm's section with its parameter model
        (errors located at ``<name>.<field>``, unknown keys refused as ``extra_forbidden``); then check
        that the convention is in force."""
        if not isinstance(data, dict):
            return handler(data)
        if data.get("convention") == "paper":
            data = apply_convention(data, PAPER_CONVENTION)
        groups = _registry().param_groups()
        errors: list[dict[str, Any]] = []
        sections: dict[str, BaseModel] = {}
        for name, model in groups.items():
            try:
                sections[name] = model.model_validate(data.get(name, {}))
            except ValidationError as err:
                errors += [{**e, "loc": (name, *e["loc"])} for e in err.errors()]
        errors += [
            {
                "type": "extra_forbidden",
                "loc": (key,),
                "msg": "Extra inputs are not permitted",
                "input": value,
            }
            for key, value in data.items()
            if key not in cls.model_fields and key not in groups
        ]
        try:
            cfg = handler({k: v for k, v in data.items() if k in cls.model_fields})
        except ValidationError as err:
            errors = [*err.errors(), *errors]
        if errors:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    {"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"], "input": e["input"]}
                    for e in errors
                ],
            )
        cfg.__pydantic_extra__.update(sections)
        # `convention: paper` with every field it governs at klq-lab's default is a config whose fields were
        # all sent explicitly (a form does that), not the paper's conventions: say so rather than run ours.
        if cfg.convention == "paper" and all(
            _dotted_get(cfg, key) == _dotted_get(_klq_lab(), key) for key in PAPER_CONVENTION
        ):
            raise ValueError(
                "convention 'paper' but every field it governs (" + ", ".join(PAPER_CONVENTION) + ") has "
                "klq-lab's value: leave those fields out to take the paper's, or set convention: klq-lab"
            )
        return cfg

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        """The fields' schema plus one property per registered algorithm's section (a $ref to its model,
        generated now: the registry's sections at the time, plugins included); no other keys."""
        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        for name, model in _registry().param_groups().items():
            target.setdefault("properties", {})[name] = handler(model.__pydantic_core_schema__)
        target["additionalProperties"] = False
        return json_schema

    @model_validator(mode="after")
    def _whole_groups(self) -> RunConfig:
        """A batch holds whole groups of k responses. Minibatches need not: group baselines (RLOO, GRPO) are
        computed over the whole batch before the update, and rows are then shuffled one by one. And at least the
        algorithm's ``min_generations`` responses per prompt (RLOO, GRPO: 2)."""
        if self.train.batch_size % self.rollout.num_generations:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must be divisible by rollout.num_generations "
                f"({self.rollout.num_generations}): each prompt of a batch is sampled num_generations times"
            )
        # The built-in task is the one with a gold reward (klq.tasks: BuiltinTask.has_gold_reward).
        if self.eval_judge.backend == "gold" and self.task.name != "builtin":
            raise ValueError(f"eval_judge.backend 'gold' needs a task with a gold reward (task.name 'builtin'), "
                             f"not task.name {self.task.name!r}")
        need = _registry().ALGORITHMS[self.algorithm].min_generations
        if self.rollout.num_generations < need:
            raise ValueError(
                f"rollout.num_generations ({self.rollout.num_generations}) must be at least {need} for algorithm "
                f"{self.algorithm!r}: its baseline compares the responses to the same prompt"
            )
        return self

    @property
    def tau(self) -> float:
        return self.kl_coef

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A new validated config with `overrides` (nested dicts or dotted keys) merged in. Overrides that
        change `convention` reset the convention's fields to the new one's values unless they set them too."""
        base = self.model_dump()
        if expand_dotted(overrides).get("convention", self.convention) != self.convention:
            for dotted in PAPER_CONVENTION:
                *parents, leaf = dotted.split(".")
                node = base
                for part in parents:
                    node = node[part]
                node.pop(leaf, None)  # refilled by the new convention (or the field defaults)
        return RunConfig.model_validate(apply_overrides(base, overrides))


def _dotted_get(cfg: BaseModel, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@cache
def _klq_lab() -> RunConfig:
    """klq-lab's values of the convention fields (made on first use: it reads the registry)."""
    return RunConfig(convention="klq-lab")


def apply_convention(data: dict[str, Any], convention: dict[str, Any]) -> dict[str, Any]:
    """`data` with each dotted field of `convention` that it does not set filled in (a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted, value in convention.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            node[part] = child = dict(child) if isinstance(child, dict) else ({} if child is None else child)
            node = child
        if isinstance(node, dict) and leaf not in node:
            if value == "batch_size":
                value = node.get("batch_size", TrainConfig.model_fields["batch_size"].default)
            node[leaf] = value
    return out


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` (a nested dict) with ``overrides`` merged in: dotted keys (``{"train.batch_size": 8}``) or
    nested dicts, merged key by key (a new dict; ``config`` is not changed). The one override expander: the
    CLI's ``--set``, ``load_config``, ``RunConfig.with_overrides`` and ``klq.client`` all use it."""
    return deep_merge(dict(config), expand_dotted(dict(overrides or {})))


def expand_dotted(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.batch_size": 8} -> {"train": {"batch_size": 8}}; nested dicts pass through."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = deep_merge(node.get(leaf, {}), value) if isinstance(value, dict) else value
    return out


def deep_merge(base: Any, update: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(update, dict):
        return update
    merged = dict(base)
    for key, value in update.items():
        merged[key] = deep_merge(base.get(key), value) if key in base else value
    return merged


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a RunConfig from a .yaml/.yml/.json file, with optional dotted-key overrides."""
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(apply_overrides(data, overrides))
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid run configuration\n{format_validation_error(err)}") from err


class ConfigError(ValueError):
    pass


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, each naming the dotted field, e.g. 'train.batch_size: Input should be ...'."""
    lines = []
    for problem in err.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "(config)"
        lines.append(f"{field}: {problem['msg']}")
    return "\n".join(lines)
