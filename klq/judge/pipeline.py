"""The judge pipeline, once: held-out prompts -> both policies' responses -> verdicts in both orders.

`klq judge` (klq/judge/cli.py) and the worker's judgements (worker/runner.py) both call
`judge_two_policies`; they differ only in where the policies and the judge come from and in what they do
with progress (a terminal counter; verdicts written to the database under the worker's lease).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from klq.judge.core import Comparison, Judge, JudgementResult, ProgressCallback, run_judgement
from klq.judge.generate import generate_responses
from klq.judge.stats import CIMethod
from klq.tasks import Prompt

PolicyPaths = tuple[str, str | None]  # (policy model path or id, tokenizer path or id; None: the model's)


def judge_two_policies(
    prompts: Sequence[Prompt],
    policy_a: PolicyPaths,
    policy_b: PolicyPaths,
    judge: Judge,
    template: str | None,
    *,
    response_length: int,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    stop_sequences: Sequence[str] = (),
    device: str = "auto",
    batch_size: int = 32,
    done_ids: Iterable[str] = (),
    on_progress: ProgressCallback | None = None,
    on_generate: Callable[[str, str], None] | None = None,
    ci_method: CIMethod = "wilson",
) -> JudgementResult:
    """Generate each policy's response to every prompt (same decoding and seed for both sides), then
    judge every pair in both presentation orders (`run_judgement`). `done_ids`: prompts already judged
    in both orders (a resumed judgement), skipped; `on_progress(done, total, new_records)` after each batch
    of verdicts; `on_generate(side, model)` before each side's generation ("A", "B")."""
    texts = [p.text for p in prompts]
    responses: list[list[str]] = []
    for side, (model, tokenizer) in (("A", policy_a), ("B", policy_b)):
        if on_generate is not None:
            on_generate(side, model)
        responses.append(
            generate_responses(
                model, tokenizer, texts, response_length, greedy=greedy, temperature=temperature, seed=seed,
                device=device, batch_size=batch_size, stop_sequences=stop_sequences,
            )
        )
    comparisons = [Comparison(p.id, p.text, a, b) for p, a, b in zip(prompts, *responses)]
    return run_judgement(
        comparisons, judge, template, seed=seed, on_progress=on_progress, done_ids=done_ids, ci_method=ci_method
    )
