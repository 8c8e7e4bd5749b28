"""klq.judge: win-rate statistics, the two-order protocol, the answer parser, and the four judge backends.

The OpenAI-compatible judge is tested against a small HTTP server on 127.0.0.1 (random port) that speaks
the chat-completions protocol: it STANDS IN FOR A REMOTE MODEL (OpenAI, or a vLLM server), with scripted
failures (429 with Retry-After, 500, a hang past the timeout, 401).

Still to come (needs the trainer): "the gold judge on the built-in task prefers a trained policy to its
SFT policy" (train a short run, then `klq judge --a RUN --b reference --judge gold`, expect win-rate > 0.5).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from klq.judge.backends import (
    BACKENDS,
    GoldJudge,
    JudgeAPIError,
    JudgeSettings,
    LocalHFJudge,
    OpenAIJudge,
    RewardModelJudge,
    make_judge,
    parse_retry_after,
    validate_spec,
)
from klq.judge.core import (
    Comparison,
    JudgementRecord,
    JudgeRequest,
    combine,
    first_order,
    run_judgement,
    summarize_records,
)
from klq.judge.stats import bootstrap_interval, summarize, wilson_interval
from klq.judge.templates import (
    DIALOGUE,
    GENERIC,
    SUMMARISATION,
    format_prompt,
    parse_verdict,
    resolve_template,
    validate_template,
)

# ----------------------------------------------------------------------------------------------- helpers


def comparisons(n: int, good_side: str = "1") -> list[Comparison]:
    """n prompts; the response of policy 1 (A) is 'good' when good_side == "1", else policy 2's."""
    out = []
    for i in range(n):
        good, bad = f"good answer {i}", f"poor answer {i}"
        r1, r2 = (good, bad) if good_side == "1" else (bad, good)
        out.append(Comparison(f"p{i:03d}", f"question {i}?", r1, r2))
    return out


class ScriptedJudge:
    """A judge whose answer is a function of the request (records every request it sees)."""

    def __init__(self, answer):
        self.answer = answer
        self.seen: list[JudgeRequest] = []

    def judge(self, requests):
        self.seen += requests
        return [self.answer(r) for r in requests]


def prefers_good(r: JudgeRequest) -> str:
    return "A" if "good" in r.response_a else "B"


# ------------------------------------------------------------------------------------------------- stats


def test_wilson_interval_by_hand_7_wins_2_ties_1_loss():
    # Ties count half: win-rate = (7 + 0.5 * 2) / 10 = 0.8, n = 10 valid verdicts, z = 1.959964.
    #   z^2 / n   = 3.841459 / 10 = 0.3841459;  denominator 1 + z^2/n = 1.3841459
    #   centre    = (0.8 + z^2 / 20) / 1.3841459 = (0.8 + 0.1920729) / 1.3841459 = 0.7167402
    #   sqrt term = sqrt(0.8 * 0.2 / 10 + z^2 / 400) = sqrt(0.016 + 0.0096036) = 0.1600114
    #   half      = 1.959964 * 0.1600114 / 1.3841459 = 0.2265777
    #   interval  = [0.7167402 - 0.2265777, 0.7167402 + 0.2265777] = [0.4901625, 0.9433179]
    s = summarize(["A"] * 7 + ["tie"] * 2 + ["B"])
    assert (s.n, s.wins_a, s.wins_b, s.ties, s.invalid, s.valid) == (10, 7, 1, 2, 0, 10)
    assert s.win_rate == pytest.approx(0.8)
    assert s.ci_low == pytest.approx(0.4901625, abs=1e-6)
    assert s.ci_high == pytest.approx(0.9433179, abs=1e-6)
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433179), abs=1e-6)
    d = s.to_dict()
    assert d["win_rate"] == pytest.approx(0.8) and d["valid"] == 10 and d["ci_method"] == "wilson"
    json.dumps(d)


def test_wilson_interval_more_hand_values():
    # 5 of 10: centre 0.5, half = 1.959964 * sqrt(0.025 + 0.0096036) / 1.3841459 = 0.2634069.
    assert wilson_interval(5, 10) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)
    # 0 of 4: centre = (z^2/8) / (1 + z^2/4) = 0.4801824 / 1.9603647 = 0.2449454 = half -> [0, 0.4898908].
    assert wilson_interval(0, 4) == pytest.approx((0.0, 0.4898908), abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_invalid_verdicts_are_not_wins_and_leave_the_denominator():
    s = summarize(["A", "A", "B", "invalid", "invalid", "invalid"])
    assert (s.n, s.wins_a, s.wins_b, s.ties, s.invalid) == (6, 2, 1, 0, 3)
    assert s.win_rate == pytest.approx(2 / 3)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(2, 3))
    nothing = summarize(["invalid"] * 4)
    assert nothing.win_rate is None and nothing.ci_low is None and nothing.invalid == 4


def test_bootstrap_interval_is_seeded_and_sensible():
    verdicts = ["A"] * 14 + ["tie"] * 4 + ["B"] * 12
    a = summarize(verdicts, method="bootstrap", seed=3)
    b = summarize(verdicts, method="bootstrap", seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.ci_method == "bootstrap" and a.win_rate == pytest.approx(16 / 30)
    assert a.ci_low < a.win_rate < a.ci_high
    wilson = summarize(verdicts)
    assert abs((a.ci_high - a.ci_low) - (wilson.ci_high - wilson.ci_low)) < 0.08
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)


# --------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("raw,expected", [
    ("A", "A"), ("B", "B"), ("A.", "A"), (" B\n", "B"), ("**A**", "A"), ("Response A", "A"), ("Summary B.", "B"),
    ("(A)", "A"), ("Answer: A", "A"), ("Answer: **B**", "B"), ("The answer is B", "B"), ("A is better", "A"),
    ("A\nIt is more concise.", "A"), ("B. Shorter and on topic.", "B"), ("tie", "tie"), ("It's a tie.", "tie"),
    ("A (0.8300 vs 0.1200)", "A"), ("tie (0.5000 vs 0.5000)", "tie"), ("<think>hmm</think>B", "B"),
    ("A and B", "invalid"), ("A or B", "invalid"), ("", "invalid"), (None, "invalid"), ("A, B", "invalid"),
    ("AB", "invalid"), ("C", "invalid"), ("Both", "invalid"), ("I think both are fine", "invalid"),
    ("a good summary", "invalid"), ("A. But B is also good.", "invalid"), ("B\nA is better", "invalid"),
    ("Well, Summary A covers the main points but B is shorter. Overall I prefer A.", "invalid"),
    ("invalid (prompt too long)", "invalid"),
])
def test_parse_verdict(raw, expected):
    assert parse_verdict(raw) == expected


def test_templates_format_and_validate():
    for t in (SUMMARISATION, DIALOGUE, GENERIC):
        assert validate_template(t) is t
        assert '"A"' in t and '"B"' in t
    assert resolve_template("tldr") is SUMMARISATION and resolve_template("hh") is DIALOGUE
    assert resolve_template(None) is GENERIC
    # One pass: a response containing a placeholder is not expanded; other braces are left alone.
    text = format_prompt("{prompt} | {response_a} | {response_b} | {json}", "P", "{response_b}", "y")
    assert text == "P | {response_b} | y | {json}"
    with pytest.raises(ValueError, match=r"missing the placeholder\(s\) \{response_b\}"):
        validate_template("Prompt {prompt}\nA: {response_a}\nAnswer A or B")
    with pytest.raises(ValueError, match="empty"):
        validate_template("   ")
    with pytest.raises(ValueError, match="unknown judge template"):
        resolve_template("summarisationn")
    user = "Q: {prompt}\n1) {response_a}\n2) {response_b}\nAnswer A or B."
    assert resolve_template(user) == user


# ---------------------------------------------------------------------------------------------- protocol


def test_position_swap_cancels_a_judge_that_always_answers_A():
    judge = ScriptedJudge(lambda r: "A")
    result = run_judgement(comparisons(20), judge, seed=0)
    s = result.summary
    assert (s.n, s.wins_a, s.wins_b, s.ties, s.invalid) == (20, 0, 0, 20, 0)
    assert s.win_rate == pytest.approx(0.5)
    assert s.position_consistency == 0.0 and s.consistency_checked == 20
    assert all(r.consistent is False for r in result.records)
    # Every prompt was shown in both orders, the seeded random one first.
    assert len(judge.seen) == 40
    orders = [r.first.order for r in result.records]
    assert set(orders) == {"AB", "BA"}
    assert all({r.first.order, r.second.order} == {"AB", "BA"} for r in result.records)
    assert orders == [first_order(0, c.prompt_id) for c in comparisons(20)]


def test_answers_are_mapped_back_to_the_policies():
    judge = ScriptedJudge(prefers_good)
    result = run_judgement(comparisons(12, good_side="1"), judge, template=GENERIC, seed=1)
    s = result.summary
    assert (s.wins_a, s.wins_b, s.ties, s.win_rate, s.position_consistency) == (12, 0, 0, 1.0, 1.0)
    for r in result.records:
        assert r.verdict == "A" and r.consistent is True
        assert {r.first.answer, r.second.answer} == {"A", "B"}  # positions differ, policy verdicts agree
    # The template was filled in: the judge saw the formatted prompt.
    req = judge.seen[0]
    assert req.text == format_prompt(GENERIC, req.prompt, req.response_a, req.response_b)
    flipped = run_judgement(comparisons(12, good_side="2"), ScriptedJudge(prefers_good), seed=1).summary
    assert (flipped.wins_b, flipped.win_rate) == (12, 0.0)


def test_invalid_outputs_are_counted_as_invalid_not_as_wins():
    # Valid "A" when policy 1 is shown first, rambling otherwise: policy 1 would win if invalids counted.
    judge = ScriptedJudge(lambda r: "A" if "good" in r.response_a else "Both are good, hard to say.")
    result = run_judgement(comparisons(10), judge)
    s = result.summary
    assert (s.wins_a, s.wins_b, s.ties, s.invalid) == (0, 0, 0, 10)
    assert s.win_rate is None and s.position_consistency is None
    assert all(r.verdict == "invalid" and r.consistent is None for r in result.records)
    assert combine("A", "invalid") == ("invalid", None)
    assert combine("tie", "A") == ("tie", False)


def test_done_ids_are_skipped_and_records_round_trip():
    cs = comparisons(10)
    progress = []
    first = run_judgement(cs[:4], ScriptedJudge(prefers_good), seed=2)
    stored = [JudgementRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in first.records]
    judge = ScriptedJudge(prefers_good)
    second = run_judgement(cs, judge, seed=2, done_ids={r.prompt_id for r in stored}, previous=stored,
                           batch_size=4, on_progress=lambda d, t, new: progress.append((d, t, len(new))))
    assert second.skipped == [c.prompt_id for c in cs[:4]]
    assert {r.prompt.split()[1] for r in judge.seen} == {f"{i}?" for i in range(4, 10)}
    assert len(second.records) == 6 and second.summary.n == 10 and second.summary.wins_a == 10
    assert progress == [(4, 10, 0), (8, 10, 4), (10, 10, 2)]
    with pytest.raises(ValueError, match="duplicate prompt id"):
        run_judgement(cs + cs[:1], judge)
    assert summarize_records(stored + second.records).n == 10


# --------------------------------------------------------------------------------- OpenAI-compatible judge


class StandInModel:
    """The behaviour of the stand-in remote model, and its scripted failures (one per incoming request)."""

    def __init__(self, api_key: str):
        self.api_key = api_key
        self.plan: list[str] = []  # "429", "500", "hang", "401" consumed first-in first-out; then normal
        self.fail_on: str | None = None  # always answer 500 to requests whose prompt contains this text
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        # a "hang" answers only once this is set (at teardown): the client's timeout, however short or
        # long the machine makes it, always runs out first
        self.release = threading.Event()

    def answer(self, content: str) -> str:
        """A toy judge that reads the judge prompt: the response containing "good" wins."""
        a = content.split("Response A:\n", 1)[1].split("\n\nResponse B:", 1)[0]
        return "A" if "good" in a else "B"


def make_handler(model: StandInModel):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output quiet
            pass

        def _send(self, status: int, body: dict | str, headers: dict | None = None):
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with model.lock:
                step = model.plan.pop(0) if model.plan else None
                model.calls.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                    "step": step})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            if self.headers.get("Authorization") != f"Bearer {model.api_key}" or step == "401":
                # Like some servers, echo the key it got; the client must redact it.
                got = self.headers.get("Authorization", "")
                return self._send(401, {"error": {"message": f"Incorrect API key provided: {got}"}})
            content = body["messages"][-1]["content"]
            if step == "429":
                return self._send(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "1"})
            if step == "500" or (model.fail_on and model.fail_on in content):
                return self._send(500, {"error": {"message": "internal error"}})
            if step == "hang":
                model.release.wait(60)
            self._send(200, {
                "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": model.answer(content)}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            })

    return Handler


@pytest.fixture
def stand_in():
    """A local chat-completions server standing in for a remote judge model."""
    model = StandInModel(api_key="sk-test-SECRET-123")
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(model))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield model, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        model.release.set()
        server.shutdown()
        server.server_close()


def openai_judge(url, key="sk-test-SECRET-123", **kw):
    sleeps: list[float] = []
    kw.setdefault("concurrency", 1)
    judge = OpenAIJudge(url, "judge-model", api_key=key, timeout=kw.pop("timeout", 5.0),
                        max_retries=kw.pop("max_retries", 3),
                        backoff_base=0.01, sleep=sleeps.append, **kw)
    return judge, sleeps


def test_openai_judge_speaks_chat_completions(stand_in):
    model, url = stand_in
    judge, sleeps = openai_judge(url, concurrency=4)
    result = run_judgement(comparisons(6), judge, template=GENERIC, seed=0)
    s = result.summary
    assert (s.wins_a, s.invalid, s.win_rate, s.position_consistency) == (6, 0, 1.0, 1.0)
    assert len(model.calls) == 12 and not sleeps
    body = model.calls[0]["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and body["max_tokens"] <= 8
    assert body["messages"][-1]["role"] == "user" and "{response_a}" not in body["messages"][-1]["content"]
    assert all(r.first.raw in ("A", "B") for r in result.records)
    judge.close()


def test_openai_judge_retries_429_honouring_retry_after_then_succeeds(stand_in):
    model, url = stand_in
    model.plan = ["429"]
    judge, sleeps = openai_judge(url)
    outputs = judge.judge([JudgeRequest("q", "good", "poor", text=format_prompt(GENERIC, "q", "good", "poor"))])
    assert outputs == ["A"]
    assert [c["step"] for c in model.calls] == ["429", None]
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 1.2  # Retry-After: 1 (plus a little jitter)


def test_openai_judge_retries_500_and_timeouts_with_backoff(stand_in):
    model, url = stand_in
    model.plan = ["500", "hang", "500"]
    # the "hang" never answers in time; 3 s is ample for the normal answers of a loaded machine
    judge, sleeps = openai_judge(url, max_retries=3, timeout=3.0)
    outputs = judge.judge([JudgeRequest("q", "poor", "good", text=format_prompt(GENERIC, "q", "poor", "good"))])
    assert outputs == ["B"]
    assert judge.requests_sent == 4 and len(sleeps) == 3
    # Exponential backoff with jitter: base 0.01 * 2**attempt * uniform(0.5, 1).
    for attempt, delay in enumerate(sleeps):
        assert 0.005 * 2**attempt <= delay <= 0.01 * 2**attempt


def test_openai_judge_gives_up_with_a_clear_error_and_never_leaks_the_key(stand_in):
    model, url = stand_in
    model.plan = ["500"] * 10
    judge, sleeps = openai_judge(url, max_retries=2)
    with pytest.raises(JudgeAPIError, match=r"failed after 3 attempt\(s\); last error: HTTP 500") as err:
        judge.judge([JudgeRequest("q", "a", "b", text="q {}")])
    assert len(sleeps) == 2 and err.value.status == 500
    # A wrong key: 401 is not retried; the server echoes the key it got, the error must not.
    model.plan = []
    bad, _ = openai_judge(url, key="sk-wrong-KEY-999")
    with pytest.raises(JudgeAPIError, match="HTTP 401") as err:
        bad.judge([JudgeRequest("q", "a", "b", text="q")])
    assert "sk-wrong-KEY-999" not in str(err.value) and err.value.__cause__ is None
    assert model.calls[-1]["step"] is None and len([c for c in model.calls if c["auth"].endswith("999")]) == 1
    for obj in (judge, bad, JudgeSettings(api_key="sk-test-SECRET-123", base_url="http://u:pw@h/v1")):
        assert "SECRET" not in repr(obj) and "999" not in repr(obj) and "pw" not in repr(obj)


def test_retried_judgement_does_not_double_count_prompts(stand_in):
    """A judgement fails mid-way (the endpoint keeps failing on one prompt); the retried task resumes
    from the stored records and judges every prompt exactly once."""
    model, url = stand_in
    cs = comparisons(8)
    model.fail_on = "question 5?"
    stored: list[JudgementRecord] = []
    judge, _ = openai_judge(url, max_retries=1)
    with pytest.raises(JudgeAPIError):
        run_judgement(cs, judge, template=GENERIC, seed=7, batch_size=2,
                      on_progress=lambda done, total, new: stored.extend(new))
    assert [r.prompt_id for r in stored] == ["p000", "p001", "p002", "p003"]  # batches before the failure
    model.fail_on = None
    seen_before = len(model.calls)
    retry, _ = openai_judge(url)
    result = run_judgement(cs, retry, template=GENERIC, seed=7, batch_size=2,
                           done_ids={r.prompt_id for r in stored}, previous=stored,
                           on_progress=lambda done, total, new: stored.extend(new))
    asked = {re.search(r"question (\d+)\?", c["body"]["messages"][-1]["content"]).group(1)
             for c in model.calls[seen_before:]}
    assert asked == {"4", "5", "6", "7"}
    assert len(model.calls) - seen_before == 8  # 4 prompts x 2 orders, once each
    assert sorted(r.prompt_id for r in stored) == [c.prompt_id for c in cs]
    assert result.summary.n == 8 and result.summary.wins_a == 8


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({}) is None and parse_retry_after({"retry-after": "soon"}) is None


def test_human_votes_are_a_spec_only_where_the_api_records_them():
    """{"backend": "human"} is people voting through the API: no worker, `make_judge` or `klq judge` runs it."""
    with pytest.raises(ValueError, match="human.*cannot be run by a worker"):
        validate_spec({"backend": "human"})
    with pytest.raises(ValueError, match="human.*cannot be run by a worker"):
        make_judge({"backend": "human"})
    assert validate_spec({"backend": "human"}, allow_human=True) == {"backend": "human"}
    with pytest.raises(ValueError, match="unknown key.*model.*takes none"):
        validate_spec({"backend": "human", "model": "x"}, allow_human=True)
    assert "human" not in BACKENDS  # not a choice of `klq judge --judge`, an experiment or eval_judge


def test_make_judge_takes_secrets_from_settings_never_from_the_spec(monkeypatch):
    with pytest.raises(ValueError, match="api_key.*server settings"):
        validate_spec({"backend": "openai", "api_key": "sk-x"})
    with pytest.raises(ValueError, match="base_url"):
        make_judge({"backend": "openai", "base_url": "http://evil/v1"})
    with pytest.raises(ValueError, match="unknown judge backend"):
        validate_spec({"backend": "gpt"})
    with pytest.raises(ValueError, match="unknown key"):
        validate_spec({"backend": "gold", "model": "x"})
    with pytest.raises(ValueError, match="needs 'model'"):
        validate_spec({"backend": "local_hf"})
    monkeypatch.setenv("KLQ_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("KLQ_JUDGE_API_KEY", "sk-env-SECRET")
    monkeypatch.setenv("KLQ_JUDGE_MODEL", "env-model")
    judge = make_judge({"backend": "openai"})
    assert (judge.base_url, judge.model) == ("http://127.0.0.1:9/v1", "env-model") and "SECRET" not in repr(judge)

    class ServerSettings:  # e.g. the backend's pydantic-settings object
        judge_base_url = "http://judge.internal/v1"
        judge_api_key = "sk-server"
        judge_model = None

    judge = make_judge({"backend": "openai", "model": "gpt-4o-mini", "max_tokens": 2}, ServerSettings())
    assert (judge.base_url, judge.model, judge.max_tokens) == ("http://judge.internal/v1", "gpt-4o-mini", 2)
    assert judge._secret == "sk-server"


# ----------------------------------------------------------------------------------------- local HF judge

JUDGE_WORDS = ["<pad>", "<eos>", "<unk>", "A", "B", "question", "response", "answer", "good", "poor", ":", "?"] + [
    str(i) for i in range(10)]


def build_tiny_judge(path, prefer: str | None, seed: int = 0):
    """A tiny word-level tokenizer (with tokens "A" and "B") and a 2-layer GPT-2 saved under `path`.

    prefer="A"/"B": ln_f is made constant and lm_head reads it so that the next-token logits always favour
    that answer by a wide margin (a deterministic judge); "tie": A and B get identical logits; None: random.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(JUDGE_WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(JUDGE_WORDS), n_positions=256,
                     eos_token_id=1, pad_token_id=0, bos_token_id=1, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                     tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg).eval()
    if prefer is not None:
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.fill_(1.0)
            model.lm_head.weight.zero_()
            a, b = JUDGE_WORDS.index("A"), JUDGE_WORDS.index("B")
            model.lm_head.weight[a] = 0.2 if prefer in ("A", "tie") else 0.0
            model.lm_head.weight[b] = 0.2 if prefer in ("B", "tie") else 0.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_local_hf_judge_always_A_is_cancelled_by_the_swap(tmp_path):
    judge = LocalHFJudge(str(build_tiny_judge(tmp_path / "always-a", "A")), device="cpu")
    result = run_judgement(comparisons(6), judge, template="question {prompt} response {response_a} "
                                                           "response {response_b} answer :")
    assert all(r.first.answer == "A" and r.second.answer == "A" for r in result.records)
    assert result.records[0].first.raw.startswith("A (")
    s = result.summary
    assert (s.ties, s.win_rate, s.position_consistency) == (6, 0.5, 0.0)
    always_b = LocalHFJudge(str(build_tiny_judge(tmp_path / "always-b", "B")), device="cpu")
    assert parse_verdict(always_b.judge([JudgeRequest("q", "x", "y", text="question 1 ?")])[0]) == "B"
    tie = LocalHFJudge(str(build_tiny_judge(tmp_path / "tie", "tie")), device="cpu")
    assert parse_verdict(tie.judge([JudgeRequest("q", "x", "y", text="answer :")])[0]) == "tie"


def test_local_hf_judge_logprobs_match_an_unbatched_forward(tmp_path):
    """Left padding and position ids: batched answer log-probs equal one-prompt-at-a-time full forwards."""
    path = build_tiny_judge(tmp_path / "random", None, seed=3)
    judge = LocalHFJudge(str(path), device="cpu", batch_size=4)
    texts = ["question 1 ? answer :", "question 2 2 2 ? response good response poor answer :", "good",
             "response poor ? answer"]
    got = judge.answer_logprobs(texts)
    a, b = JUDGE_WORDS.index("A"), JUDGE_WORDS.index("B")
    for text, pair in zip(texts, got):
        ids = judge.tokenizer(text, return_tensors="pt")["input_ids"]
        logp = judge.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        assert pair == pytest.approx((logp[a].item(), logp[b].item()), abs=1e-5)
        raw = judge.judge([JudgeRequest("q", "x", "y", text=text)])[0]
        assert parse_verdict(raw) == ("A" if pair[0] > pair[1] else "B")
    judge.max_length = 3
    assert parse_verdict(judge.judge([JudgeRequest("q", "x", "y", text=texts[1])])[0]) == "invalid"


# ------------------------------------------------------------------------------ built-in task: gold, RM, CLI


@pytest.fixture(scope="module")
def assets(request, tmp_path_factory):
    """The built-in task's assets: the session fixture `builtin_assets` of tests/conftest.py when it
    exists, else built here into a temporary KLQ_DATA_DIR (about a minute on CPU)."""
    try:
        yield request.getfixturevalue("builtin_assets")
        return
    except pytest.FixtureLookupError:
        pass
    from klq.tasks.builtin import build_assets

    with pytest.MonkeyPatch.context() as mp:
        data = tmp_path_factory.mktemp("klq-data")
        mp.setenv("KLQ_DATA_DIR", str(data))
        yield build_assets(data / "assets" / "builtin", log=lambda _msg: None)


def good_and_bad(prompts):
    from klq.tasks.builtin import FITTING, subject_of

    out = []
    for p in prompts:
        subject = subject_of(p.text)
        fit = FITTING[subject]
        good = f"the {subject} was {fit[0]} and {fit[1]} ."
        bad = f"the car was cold and bland and {subject} {subject} stale"
        out.append((p, good, bad))
    return out


def test_gold_judge_prefers_good_responses_on_the_builtin_task(assets):
    from klq.tasks.builtin import BuiltinTask

    task = BuiltinTask()
    rows = good_and_bad(task.prompts("eval")[:16])
    judge = make_judge({"backend": "gold"}, task=task)
    assert isinstance(judge, GoldJudge) and judge.uses_template is False
    result = run_judgement([Comparison(p.id, p.text, good, bad) for p, good, bad in rows], judge, seed=0)
    s = result.summary
    assert (s.n, s.wins_a, s.invalid, s.win_rate, s.position_consistency) == (16, 16, 0, 1.0, 1.0)
    raw = result.records[0].first.raw
    m = re.fullmatch(r"([AB]) \((-?[\d.]+) vs (-?[\d.]+)\)", raw)
    assert m and float(m.group(2)) != float(m.group(3))
    assert s.ci_low == pytest.approx(wilson_interval(16, 16)[0])
    swapped = run_judgement([Comparison(p.id, p.text, bad, good) for p, good, bad in rows], judge).summary
    assert swapped.wins_b == 16 and swapped.win_rate == 0.0
    same = run_judgement([Comparison(p.id, p.text, good, good) for p, good, _ in rows], judge).summary
    assert same.ties == 16 and same.position_consistency == 1.0


def test_reward_model_judge_agrees_with_gold_on_clear_pairs(assets):
    from klq.tasks.builtin import BuiltinTask

    rows = good_and_bad(BuiltinTask().prompts("eval")[:16])
    judge = make_judge({"backend": "reward_model", "model": "builtin:reward", "device": "cpu"})
    assert isinstance(judge, RewardModelJudge)
    s = run_judgement([Comparison(p.id, p.text, good, bad) for p, good, bad in rows], judge).summary
    assert s.win_rate >= 0.9 and s.position_consistency == 1.0


# The built-in judge's measured quality (seed 0; see meta.json["judge"]), with margin
# (measured: good vs corrupted win-rate 0.75-0.77 with consistency 0.60-0.63 over 256 pairs; hand-written
# pairs 1.0 / 1.0; agreement with gold on ordinary pairs 0.61-0.75 with consistency 0.77-0.86; held-out
# accuracy 0.68 on 942 pairs in both orders).
WIN_RATE_CORRUPTED = 0.65
CONSISTENCY_CORRUPTED = 0.5
WIN_RATE_HAND = 0.9
AGREEMENT_GOLD = 0.55
CONSISTENCY_ORDINARY = 0.65
HELDOUT_ACCURACY = 0.6


def test_local_hf_judge_refuses_a_tokenizer_without_answer_tokens(assets):
    # (builtin:judge, with its own case-preserving tokenizer, is the built-in model for this judge.)
    # The built-in tokenizer lower-cases and has no "a"/"b" words: no single token for "A" -> clear error.
    with pytest.raises(ValueError, match="no single token for the answer 'A'"):
        LocalHFJudge("builtin:sft", device="cpu")


def generator_pairs(prompts, seed: int, clear: float | None = None):
    """(prompt, response 1, response 2, gold 1, gold 2) per prompt from the built-in task's own generator.

    clear=None: two demonstrations of random quality (an ordinary pair, ties dropped). clear=M: a good
    demonstration against a corruption of it (`corrupt`), kept only when gold prefers the good one by M.
    """
    import random

    from klq.tasks.builtin import corrupt, demonstration, gold_score, subject_of

    rng = random.Random(f"judge-test-{seed}")
    rows = []
    for p in prompts:
        for _attempt in range(50):
            subject = subject_of(p.text)
            if clear is None:
                one = " ".join(demonstration(subject, rng.random(), rng)[0])
                two = " ".join(demonstration(subject, rng.random(), rng)[0])
            else:
                words, _ended = demonstration(subject, 0.7 + 0.3 * rng.random(), rng)
                one, two = " ".join(words), " ".join(corrupt(words, rng)[0])
            g1, g2 = gold_score(p.text, one), gold_score(p.text, two)
            if (g1 != g2) if clear is None else (g1 - g2 >= clear):
                rows.append((p, one, two, g1, g2))
                break
    return rows


def test_builtin_judge_prefers_good_responses_to_corrupted_ones(assets):
    """The built-in judge (a tiny LM trained on gold-labelled pairs, see klq.tasks.builtin) through the real
    LocalHFJudge path: judge template, tokenizer, next-token log-probs of "A" and "B"."""
    from klq.judge.templates import template_for_task
    from klq.tasks.builtin import BuiltinTask, judge_template

    assert judge_template() is resolve_template(template_for_task("builtin")) is GENERIC
    judge = make_judge({"backend": "local_hf", "model": "builtin:judge", "device": "cpu", "batch_size": 64})
    assert isinstance(judge, LocalHFJudge) and judge.use_chat_template is False
    assert len(judge.answer_ids[0]) == len(judge.answer_ids[1]) == 1  # "A" and "B" are tokens of their own
    prompts = BuiltinTask().prompts("eval")
    rows = generator_pairs(prompts, seed=0, clear=0.5)
    assert len(rows) == 256
    result = run_judgement([Comparison(p.id, p.text, one, two) for p, one, two, _, _ in rows], judge, seed=0)
    s = result.summary
    assert s.invalid == 0 and s.n == 256
    assert re.fullmatch(r"[AB] \((-[\d.]+) vs (-[\d.]+)\)", result.records[0].first.raw)
    assert s.win_rate >= WIN_RATE_CORRUPTED and s.ci_low > 0.6, s
    assert s.position_consistency is not None and s.position_consistency >= CONSISTENCY_CORRUPTED, s
    # Grossly bad responses (the hand-written pairs of the gold and reward-model tests above): no doubt.
    hand = good_and_bad(prompts[:32])
    s = run_judgement([Comparison(p.id, p.text, good, bad) for p, good, bad in hand], judge, seed=1).summary
    assert s.win_rate >= WIN_RATE_HAND and s.ci_low > 0.75 and s.position_consistency >= WIN_RATE_HAND, s


def test_builtin_judge_agrees_with_the_gold_judge(assets):
    """On ordinary pairs (two demonstrations of random quality) the built-in judge's combined verdicts agree
    with the gold judge's on a clear majority; its build recorded its held-out accuracy in meta.json."""
    from klq.tasks.builtin import BuiltinTask, read_meta

    task = BuiltinTask()
    rows = generator_pairs(task.prompts("eval")[:128], seed=1)
    comparisons = [Comparison(p.id, p.text, one, two) for p, one, two, _, _ in rows]
    judge = LocalHFJudge("builtin:judge", device="cpu", batch_size=64)
    lm = run_judgement(comparisons, judge, seed=2)
    gold = run_judgement(comparisons, GoldJudge(task), seed=2)
    assert all(r.verdict in ("A", "B") for r in gold.records)  # ties were dropped
    agree = sum(a.verdict == g.verdict for a, g in zip(lm.records, gold.records)) / len(rows)
    assert agree >= AGREEMENT_GOLD, agree
    assert lm.summary.position_consistency >= CONSISTENCY_ORDINARY, lm.summary

    meta = read_meta(assets)["judge"]
    assert meta["template"] == "generic" and meta["heldout_pairs"] >= 500
    assert meta["heldout_accuracy"] >= HELDOUT_ACCURACY and 0.35 <= meta["first_position_rate"] <= 0.65


def test_cli_judges_with_the_builtin_judge(assets, tmp_path, capsys):
    from klq.judge.cli import main
    from klq.tasks import builtin_assets_dir

    run = fake_run(tmp_path / "run", builtin_assets_dir())
    out = tmp_path / "records.jsonl"
    assert main(["--a", str(run), "--b", "reference", "--n", "6", "--judge", "local_hf", "--judge-model",
                 "builtin:judge", "--device", "cpu", "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert "win-rate A [95% CI]" in table and "position-consistency" in table
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    records, summary = lines[:-1], lines[-1]["summary"]
    assert len(records) == 6 and summary["invalid"] == 0
    # The checkpoint is the SFT policy itself: both orders show the judge the same text, so its one answer
    # means a different policy each time: every prompt is a position-inconsistent tie.
    assert summary["ties"] == 6 and summary["position_consistency"] == 0.0
    assert all(re.fullmatch(r"[AB] \(-[\d.]+ vs -[\d.]+\)", r["first"]["raw"]) for r in records)


def test_generate_responses_greedy_and_seeded(assets):
    from klq.judge.generate import generate_responses
    from klq.tasks.builtin import RESPONSE_LENGTH, BuiltinTask

    prompts = [p.text for p in BuiltinTask().prompts("eval")[:6]]
    greedy = generate_responses("builtin:sft", None, prompts, RESPONSE_LENGTH, device="cpu", batch_size=4)
    assert len(greedy) == 6 and all(isinstance(r, str) and r for r in greedy)
    assert generate_responses("builtin:sft", None, prompts, RESPONSE_LENGTH, device="cpu", batch_size=6) == greedy
    state = torch.get_rng_state()
    s1 = generate_responses("builtin:sft", None, prompts, RESPONSE_LENGTH, greedy=False, seed=5, device="cpu")
    s2 = generate_responses("builtin:sft", None, prompts, RESPONSE_LENGTH, greedy=False, seed=5, device="cpu")
    assert s1 == s2 and torch.equal(state, torch.get_rng_state())


def fake_run(root, assets_dir):
    """A run directory as the trainer leaves it: run_config.json and checkpoints/step-*/policy (here the
    SFT policy copied; a temp checkpoint without a model is ignored)."""
    from klq.config import RunConfig

    cfg = RunConfig(name="fake")
    root.mkdir()
    (root / "run_config.json").write_text(cfg.model_dump_json(indent=2))
    for step in ("step-0000002", "step-0000010"):
        shutil.copytree(assets_dir / "sft", root / "checkpoints" / step / "policy")
    (root / "checkpoints" / "step-0000011.tmp" / "policy").mkdir(parents=True)
    return root


def test_cli_judges_a_run_against_its_reference(assets, tmp_path, capsys):
    import argparse

    from klq.judge.cli import add_judge_parser, main
    from klq.judge.generate import resolve_policy
    from klq.tasks import builtin_assets_dir

    run = fake_run(tmp_path / "run", builtin_assets_dir())
    resolved = resolve_policy(str(run))
    assert resolved.model.endswith("step-0000010/policy") and resolved.tokenizer == resolved.model
    assert resolve_policy("reference", reference_run=str(run)).model == "builtin:sft"

    parser = argparse.ArgumentParser(prog="klq")
    add_judge_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "records.jsonl"
    args = parser.parse_args(["judge", "--a", str(run), "--b", "reference", "--task", "builtin", "--n", "8",
                              "--judge", "gold", "--device", "cpu", "--output", str(out)])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "win-rate A [95% CI]" in table and "position-consistency" in table
    # The checkpoint is the SFT policy itself: identical greedy responses, all ties.
    header, row = table.strip().splitlines()[-2:]
    assert row.split()[:5] == ["8", "0", "0", "8", "0"] and "0.500 [" in row and "1.000 (8/8)" in row
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 9 and lines[-1]["summary"]["ties"] == 8

    assert main(["--a", str(run), "--b", "reference", "--n", "4", "--judge", "reward_model",
                 "--device", "cpu"]) == 0
    assert main(["--a", "reference", "--b", str(run)]) == 2
    assert "cannot be 'reference'" in capsys.readouterr().err


def test_importing_the_judge_library_is_cheap():
    """The web backend imports klq.judge (templates, validate_spec) without torch or transformers."""
    code = ("import sys, klq.judge, klq.judge.backends, klq.judge.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_student_t_quantiles_and_interval_match_tables() -> None:
    from klq.judge.stats import student_t_interval, t_value

    # two-sided 95% (and one 99%) quantiles from statistical tables
    for df, table in [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (10, 2.2281389), (30, 2.0422725)]:
        assert t_value(df) == pytest.approx(table, abs=1e-6)
    assert t_value(5, 0.99) == pytest.approx(4.0321430, abs=1e-6)
    low, high = student_t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, n = 3: 2 -+ 4.3026527 / sqrt(3)
    assert (low, high) == pytest.approx((2 - 4.3026527 / 3**0.5, 2 + 4.3026527 / 3**0.5), abs=1e-6)
    with pytest.raises(ValueError):
        student_t_interval([1.0])
    with pytest.raises(ValueError):
        t_value(0)


def test_cli_table_shows_the_length_diagnostics():
    from klq.judge.cli import format_length_buckets, format_table
    from klq.judge.stats import length_control_of_verdicts, summarize

    verdicts = ["A", "A", "B", "tie", "A", "invalid"]
    len_a, len_b = [9, 8, 2, 5, 7, 30], [4, 4, 6, 5, 4, 1]  # A wins when longer; the invalid prompt is left out
    length = length_control_of_verdicts(verdicts, len_a, len_b, n_resamples=50)
    header, row = format_table(summarize(verdicts), length).splitlines()
    assert header.endswith("length-controlled A [95% CI]  words A / B")
    assert f"{length.win_rate:.3f} [{length.low:.3f}, {length.high:.3f}]" in row
    assert row.endswith(f"{(9 + 8 + 2 + 5 + 7) / 5:.1f} / {(4 + 4 + 6 + 5 + 4) / 5:.1f}")
    assert row.split()[:5] == ["6", "3", "1", "1", "1"]
    buckets = format_length_buckets(length).splitlines()
    assert buckets[0].split()[:4] == ["words", "A", "-", "B"] and len(buckets) == 1 + len(length.buckets)
    assert sum(int(line.split()[2]) for line in buckets[1:]) == 5  # each valid prompt in one bucket ("[lo, hi)")
    # fewer than two valid verdicts: no fit, the table says so
    assert length_control_of_verdicts(["A", "invalid"], [1, 2], [2, 1]) is None
    assert "n/a (fewer than 2 valid)" in format_table(summarize(["A", "invalid"]))
