"""The pairwise protocol: both presentation orders per prompt, verdicts mapped back to the policies.

Vocabulary. A judgement compares **policy A** (`Comparison.response_1`) with **policy B**
(`Comparison.response_2`). The judge itself only ever sees *positions*: the response shown first is
"Response A" in its prompt, the one shown second "Response B". To cancel position bias each prompt is
judged twice: first in a seeded random order (policy A first or policy B first, decided by
``random.Random(f"{seed}:{prompt_id}")``, so a retried or resumed judgement presents every prompt exactly as
before), then in the swapped order. Each answer is parsed (`klq.judge.templates.parse_verdict`) and mapped
back from positions to policies.

Combined per-prompt verdict (policy space):

- both orders valid and equal -> that verdict ("A", "B" or "tie");
- both valid but different -> "tie" (position-inconsistent: the preference follows the position, or one
  order says tie), and `consistent` is False;
- either order invalid -> "invalid" (never a win for anyone; `consistent` is None). A single valid order
  is not used on its own, because it would reintroduce the position bias the swap is there to cancel.

Retries never double-count: `run_judgement` skips prompt ids in `done_ids`, rejects duplicate prompt ids,
and reports each finished batch to `on_progress` so that a caller can persist records as they come.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from klq.judge.stats import CIMethod, JudgementSummary, Verdict, summarize
from klq.judge.templates import GENERIC, format_prompt, parse_verdict, validate_template

ORDER_A_FIRST = "AB"  # policy A shown as "Response A"
ORDER_B_FIRST = "BA"  # policy B shown as "Response A"


@dataclass(frozen=True)
class Comparison:
    """One prompt with the two policies' responses: response_1 from policy A, response_2 from policy B."""

    prompt_id: str
    prompt: str
    response_1: str
    response_2: str


@dataclass(frozen=True)
class JudgeRequest:
    """What a judge is asked once: the task prompt and two responses in presentation order.

    `text` is the judge prompt formatted from the template (None for judges that use no template, such as
    the reward-model and gold judges, which read `prompt`, `response_a` and `response_b` directly).
    """

    prompt: str
    response_a: str  # shown first ("Response A")
    response_b: str  # shown second ("Response B")
    text: str | None = None
    prompt_id: str = ""
    order: str = ORDER_A_FIRST


@runtime_checkable
class Judge(Protocol):
    """A batched judge: one raw output per request, in order. Raw outputs are parsed by `parse_verdict`
    (template judges answer "A"/"B"; score judges answer e.g. "A (0.83 vs 0.12)").

    Judges that need no template set the class attribute `uses_template = False`.
    """

    def judge(self, requests: list[JudgeRequest]) -> list[str]: ...


@dataclass
class OrderResult:
    """One presentation order of one prompt."""

    order: str  # "AB": policy A shown first; "BA": policy B shown first
    raw: str  # the judge's raw output
    answer: Verdict  # parsed, in positions (A = shown first)
    verdict: Verdict  # mapped to policies (A = policy A)


@dataclass
class JudgementRecord:
    """The per-prompt result: both orders (the seeded random one first) and the combined verdict."""

    prompt_id: str
    prompt: str
    response_1: str  # policy A
    response_2: str  # policy B
    first: OrderResult
    second: OrderResult
    verdict: Verdict
    consistent: bool | None  # the two orders agreed; None if either was invalid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JudgementRecord:
        data = dict(data)
        data["first"] = OrderResult(**data["first"])
        data["second"] = OrderResult(**data["second"])
        return cls(**data)


@dataclass
class JudgementResult:
    records: list[JudgementRecord]  # newly judged in this call, in input order
    summary: JudgementSummary  # over `previous` records plus the new ones
    skipped: list[str] = field(default_factory=list)  # prompt ids skipped because already done


ProgressCallback = Callable[[int, int, list[JudgementRecord]], None]


def first_order(seed: int, prompt_id: str) -> str:
    """The seeded random order a prompt is shown in first ("AB" or "BA"); the swapped order follows."""
    return ORDER_A_FIRST if random.Random(f"{seed}:{prompt_id}").random() < 0.5 else ORDER_B_FIRST


def to_policy(answer: Verdict, order: str) -> Verdict:
    """Map a positional answer back to the policies for a presentation `order`."""
    if answer in ("A", "B") and order == ORDER_B_FIRST:
        return "B" if answer == "A" else "A"
    return answer


def combine(first: Verdict, second: Verdict) -> tuple[Verdict, bool | None]:
    """(combined verdict, consistent) from the two orders' policy-space verdicts; see the module doc."""
    if first == "invalid" or second == "invalid":
        return "invalid", None
    if first == second:
        return first, True
    return "tie", False


def _requests(c: Comparison, order: str, template: str | None) -> JudgeRequest:
    a, b = (c.response_1, c.response_2) if order == ORDER_A_FIRST else (c.response_2, c.response_1)
    text = format_prompt(template, c.prompt, a, b) if template is not None else None
    return JudgeRequest(prompt=c.prompt, response_a=a, response_b=b, text=text, prompt_id=c.prompt_id, order=order)


def _order_result(order: str, raw: Any) -> OrderResult:
    raw = "" if raw is None else str(raw)
    answer = parse_verdict(raw)
    return OrderResult(order=order, raw=raw, answer=answer, verdict=to_policy(answer, order))


def summarize_records(
    records: Iterable[JudgementRecord], method: CIMethod = "wilson", confidence: float = 0.95,
    n_resamples: int = 2000, seed: int = 0,
) -> JudgementSummary:
    """Summary (counts, win-rate of A with CI, position consistency) of per-prompt records."""
    records = list(records)
    return summarize(
        [r.verdict for r in records],
        [(r.first.verdict, r.second.verdict) for r in records],
        method=method, confidence=confidence, n_resamples=n_resamples, seed=seed,
    )


def run_judgement(
    comparisons: Sequence[Comparison],
    judge: Judge,
    template: str | None = None,
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    done_ids: Iterable[str] = (),
    previous: Iterable[JudgementRecord] = (),
    batch_size: int = 16,
    ci_method: CIMethod = "wilson",
    confidence: float = 0.95,
) -> JudgementResult:
    """Judge every comparison in both orders and summarise.

    template: the judge prompt (a built-in one from `klq.judge.templates` or a user's, validated here);
        None means the generic template. Ignored by judges with `uses_template = False`.
    done_ids: prompt ids already judged (by an earlier attempt of the same judgement): skipped, so a retried
        task never judges or counts a prompt twice. Pass the earlier records as `previous` to have them in
        the summary (records of `previous` whose id is not in `done_ids` are counted too).
    on_progress(done, total, new_records): after each batch of `batch_size` prompts (2 judge requests each);
        `done` counts skipped prompts as done; `new_records` are the batch's records, ready to persist.
        Exceptions from the judge propagate; everything reported before them is complete.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    uses_template = getattr(judge, "uses_template", True)
    tmpl = validate_template(GENERIC if template is None else template) if uses_template else None
    seen: set[str] = set()
    for c in comparisons:
        if c.prompt_id in seen:
            raise ValueError(f"duplicate prompt id {c.prompt_id!r}: each prompt may be judged once per judgement")
        seen.add(c.prompt_id)
    previous = list({r.prompt_id: r for r in previous}.values())  # one record per prompt id
    done = set(done_ids) | {r.prompt_id for r in previous}
    todo = [c for c in comparisons if c.prompt_id not in done]
    skipped = [c.prompt_id for c in comparisons if c.prompt_id in done]
    total = len(comparisons)
    finished = len(skipped)
    records: list[JudgementRecord] = []
    if on_progress is not None and skipped:
        on_progress(finished, total, [])
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        orders = [first_order(seed, c.prompt_id) for c in batch]
        requests: list[JudgeRequest] = []
        for c, order in zip(batch, orders):
            swapped = ORDER_B_FIRST if order == ORDER_A_FIRST else ORDER_A_FIRST
            requests += [_requests(c, order, tmpl), _requests(c, swapped, tmpl)]
        outputs = list(judge.judge(requests))
        if len(outputs) != len(requests):
            raise RuntimeError(f"the judge returned {len(outputs)} outputs for {len(requests)} requests")
        new = []
        for i, c in enumerate(batch):
            first = _order_result(requests[2 * i].order, outputs[2 * i])
            second = _order_result(requests[2 * i + 1].order, outputs[2 * i + 1])
            verdict, consistent = combine(first.verdict, second.verdict)
            new.append(JudgementRecord(c.prompt_id, c.prompt, c.response_1, c.response_2, first, second,
                                       verdict, consistent))
        records += new
        finished += len(batch)
        if on_progress is not None:
            on_progress(finished, total, new)
    summary = summarize_records(previous + records, method=ci_method, confidence=confidence, seed=seed)
    return JudgementResult(records=records, summary=summary, skipped=skipped)
