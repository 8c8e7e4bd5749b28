"""LLM-as-a-judge: pairwise comparisons of two policies with win-rates and confidence intervals.

- `klq.judge.core`: the protocol (both presentation orders per prompt, seeded) and `run_judgement`;
- `klq.judge.templates`: judge prompt templates, their validation, and the strict answer parser;
- `klq.judge.stats`: win-rate with Wilson / bootstrap intervals, position consistency, counts;
  length-controlled win-rate (AlpacaEval 2's GLM), Bradley-Terry ratings on the Elo scale, and the
  agreement (Cohen's kappa) of two raters;
- `klq.judge.backends`: OpenAI-compatible endpoint, local HF causal LM, reward model, gold reward, and
  `make_judge(spec, settings)`;
- `klq.judge.generate`: responses of a policy (or a run directory's latest checkpoint) to judge;
- `klq.judge.in_training`: the trainer's win-rate against the reference at its evals (config `eval_judge`);
- `klq.judge.cli`: `klq judge`.

Importing this package is cheap (no torch, transformers or httpx until a backend is built).
"""

from klq.judge.core import (
    Comparison,
    Judge,
    JudgementRecord,
    JudgementResult,
    JudgeRequest,
    OrderResult,
    run_judgement,
    summarize_records,
)
from klq.judge.stats import (
    JudgementSummary,
    bootstrap_interval,
    bradley_terry,
    length_controlled_win_rate,
    rater_agreement,
    summarize,
    wilson_interval,
)
from klq.judge.templates import TEMPLATES, format_prompt, parse_verdict, resolve_template, validate_template

__all__ = [
    "TEMPLATES",
    "Comparison",
    "Judge",
    "JudgeRequest",
    "JudgementRecord",
    "JudgementResult",
    "JudgementSummary",
    "OrderResult",
    "bootstrap_interval",
    "bradley_terry",
    "format_prompt",
    "length_controlled_win_rate",
    "parse_verdict",
    "rater_agreement",
    "resolve_template",
    "run_judgement",
    "summarize",
    "summarize_records",
    "validate_template",
    "wilson_interval",
]
