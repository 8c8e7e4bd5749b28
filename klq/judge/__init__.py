"""LLM-as-a-judge: pairwise comparisons of two policies with win-rates and confidence intervals.

- `klq.judge.core`: the protocol (both presentation orders per prompt, seeded) and `run_judgement`;
- `klq.judge.templates`: judge prompt templates, their validation, and the strict answer parser;
- `klq.judge.stats`: win-rate with Wilson / bootstrap intervals, position consistency, counts;
- `klq.judge.backends`: OpenAI-compatible endpoint, local HF causal LM, reward model, gold reward, and
  `make_judge(spec, settings)`;
- `klq.judge.generate`: responses of a policy (or a run directory's latest checkpoint) to judge;
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
from klq.judge.stats import JudgementSummary, bootstrap_interval, summarize, wilson_interval
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
    "format_prompt",
    "parse_verdict",
    "resolve_template",
    "run_judgement",
    "summarize",
    "summarize_records",
    "validate_template",
    "wilson_interval",
]
