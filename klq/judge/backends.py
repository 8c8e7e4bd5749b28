"""Judge backends: an OpenAI-compatible endpoint, a local HF causal LM, a reward model, a task's gold reward.

All implement `klq.judge.core.Judge` (``judge(requests) -> raw outputs``, batched). The two template judges
(`OpenAIJudge`, `LocalHFJudge`) read the formatted judge prompt `JudgeRequest.text`; the two score judges
(`RewardModelJudge`, `GoldJudge`, ``uses_template = False``) score prompt + each response and answer
"A", "B" or "tie" with the scores attached, e.g. ``"A (0.8300 vs 0.1200)"``.

Secrets. The endpoint's base URL and API key come only from server settings or the environment
(`JudgeSettings`: ``KLQ_JUDGE_BASE_URL``, ``KLQ_JUDGE_API_KEY``, ``KLQ_JUDGE_MODEL``, ``KLQ_JUDGE_TIMEOUT``,
``KLQ_JUDGE_MAX_RETRIES``), never from a judge spec (which is stored with the judgement): `make_judge` and
`validate_spec` reject specs that carry them. The key is never logged, and never appears in a repr or in
an exception message (response bodies quoted in errors are redacted).

torch and transformers are imported only by the model-based judges, so the web backend can import this
module (for `validate_spec`) cheaply.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import logging
import math
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from klq.config import JudgeBackend
from klq.judge.core import JudgeRequest

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class JudgeAPIError(RuntimeError):
    """The judge endpoint failed for good (after the last retry, or with a non-retryable status).

    Carries only a message (no request or response objects, so no headers and no API key)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


# ------------------------------------------------------------------------------------------------ settings


def _secret_value(value: Any) -> Any:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


@dataclass(frozen=True)
class JudgeSettings:
    """Server-side settings of the OpenAI-compatible judge (never stored with a judgement)."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    model: str | None = None
    timeout: float = 60.0
    max_retries: int = 5

    def __repr__(self) -> str:
        key = "None" if not self.api_key else "'***'"
        return (f"JudgeSettings(base_url={_safe_url(self.base_url)!r}, api_key={key}, model={self.model!r}, "
                f"timeout={self.timeout}, max_retries={self.max_retries})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JudgeSettings:
        env = os.environ if env is None else env
        return cls(
            base_url=env.get("KLQ_JUDGE_BASE_URL") or DEFAULT_BASE_URL,
            api_key=env.get("KLQ_JUDGE_API_KEY") or None,
            model=env.get("KLQ_JUDGE_MODEL") or None,
            timeout=float(env.get("KLQ_JUDGE_TIMEOUT") or 60.0),
            max_retries=int(env.get("KLQ_JUDGE_MAX_RETRIES") or 5),
        )

    @classmethod
    def from_any(cls, settings: Any = None) -> JudgeSettings:
        """From None (the environment), a JudgeSettings, a mapping, or a settings object (e.g. the server's
        pydantic-settings) with attributes `judge_base_url`, `judge_api_key` (str or SecretStr),
        `judge_model`, `judge_timeout`, `judge_max_retries`; missing ones fall back to the environment."""
        if isinstance(settings, JudgeSettings):
            return settings
        base = cls.from_env()
        if settings is None:
            return base

        def get(name: str) -> Any:
            for key in (f"judge_{name}", name):
                if isinstance(settings, Mapping):
                    value = settings.get(key)
                else:
                    value = getattr(settings, key, None)
                value = _secret_value(value)
                if value not in (None, ""):
                    return value
            return getattr(base, name)

        return cls(base_url=str(get("base_url")), api_key=get("api_key"), model=get("model"),
                   timeout=float(get("timeout")), max_retries=int(get("max_retries")))


def _safe_url(url: str | None) -> str:
    """The URL without credentials, query or fragment (safe to show in logs and errors)."""
    if not url:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


# ------------------------------------------------------------------------------------------- OpenAI-compatible

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAIJudge:
    """A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, ...).

    Each request is one ``POST {base_url}/chat/completions`` with ``{"model", "messages": [user: text],
    "max_tokens", "temperature": 0}`` (plus `extra_body`, e.g. ``{"max_completion_tokens": 8}`` for models
    that want it); the raw output is ``choices[0].message.content``. Requests of a batch run on
    `concurrency` threads; outputs keep the request order.

    Retries: on HTTP 408/409/425/429 and 5xx, timeouts, connection errors and malformed bodies, up to
    `max_retries` times after the first attempt. The wait honours `Retry-After` / `retry-after-ms` (capped
    at `max_retry_after` seconds) and is otherwise exponential with jitter:
    ``min(backoff_max, backoff_base * 2**attempt) * uniform(0.5, 1)``. Other 4xx (bad key, unknown model,
    bad request) are not retried. Failure raises `JudgeAPIError`.
    """

    uses_template = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        *,
        max_tokens: int = 8,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        concurrency: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_retry_after: float = 120.0,
        extra_body: Mapping[str, Any] | None = None,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        import httpx

        if not base_url:
            raise ValueError("the judge endpoint needs a base URL (KLQ_JUDGE_BASE_URL)")
        if not model:
            raise ValueError("the judge endpoint needs a model name (KLQ_JUDGE_MODEL or the spec's 'model')")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.system_prompt = system_prompt
        self.concurrency = max(1, int(concurrency))
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._url = self.base_url + "/chat/completions"
        self._secret = api_key or ""
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=headers, transport=transport,
                                    follow_redirects=False)
        self._lock = threading.Lock()
        self.requests_sent = 0  # HTTP attempts made, retries included (for tests and metrics)

    def __repr__(self) -> str:
        return (f"OpenAIJudge(base_url={_safe_url(self.base_url)!r}, model={self.model!r}, "
                f"api_key={'***' if self._secret else None}, max_retries={self.max_retries})")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def _messages(self, text: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": text}]

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        with self._lock:
            jitter = self._rng.random()
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) + 0.1 * jitter
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + 0.5 * jitter)

    def complete(self, text: str) -> str:
        """One chat completion with retries: the assistant message's content ("" when it has none)."""
        import httpx

        payload = {
            "model": self.model,
            "messages": self._messages(text),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self.extra_body,
        }
        last, status = "no attempt made", None
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            with self._lock:
                self.requests_sent += 1
            try:
                response = self._client.post(self._url, json=payload)
            except httpx.TimeoutException as err:
                last, status = f"timed out after {self.timeout:g}s ({type(err).__name__})", None
            except httpx.TransportError as err:
                last, status = self._redact(f"connection error ({type(err).__name__}: {err})"), None
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return _message_content(response.json())
                    except (ValueError, KeyError, IndexError, TypeError):
                        last = self._redact(f"malformed response body: {response.text[:200]!r}")
                elif status in RETRY_STATUS or status >= 500:
                    retry_after = parse_retry_after(response.headers)
                    last = self._redact(f"HTTP {status}: {response.text[:300]}")
                else:
                    raise JudgeAPIError(
                        self._redact(f"judge endpoint {_safe_url(self._url)} (model {self.model!r}) refused the "
                                     f"request with HTTP {status} (not retried): {response.text[:300]}"),
                        status=status, attempts=attempt + 1,
                    ) from None
            if attempt + 1 == attempts:
                break
            delay = self._delay(attempt, retry_after)
            log.warning("judge request to %s failed (%s); retry %d/%d in %.2fs", _safe_url(self._url), last,
                        attempt + 1, self.max_retries, delay)
            self._sleep(delay)
        raise JudgeAPIError(
            f"judge endpoint {_safe_url(self._url)} (model {self.model!r}) failed after {attempts} attempt(s); "
            f"last error: {last}",
            status=status, attempts=attempts,
        ) from None

    def judge(self, requests: list[JudgeRequest]) -> list[str]:
        texts = [_request_text(r) for r in requests]
        if self.concurrency == 1 or len(texts) <= 1:
            return [self.complete(t) for t in texts]
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, len(texts))) as pool:
            return list(pool.map(self.complete, texts))


def _message_content(body: Any) -> str:
    message = body["choices"][0]["message"]
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _request_text(request: JudgeRequest) -> str:
    if request.text is None:
        raise ValueError("this judge needs a formatted judge prompt (JudgeRequest.text); use run_judgement")
    return request.text


# ------------------------------------------------------------------------------------------- local HF LM


def _verdict_from_scores(a: float, b: float, margin: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"invalid (non-finite scores {a} vs {b})"
    if abs(a - b) <= margin:
        verdict = "tie"
    else:
        verdict = "A" if a > b else "B"
    return f"{verdict} ({a:.4f} vs {b:.4f})"


class LocalHFJudge:
    """A local HF causal LM judging by the log-probabilities of the two answer tokens.

    The formatted judge prompt (wrapped in the tokenizer's chat template as a user turn, with the generation
    prompt, when the tokenizer has one and `use_chat_template` is "auto" or True) goes through the model
    once; at the next-token position we compare log p("A") with log p("B"). Each answer's probability sums
    the single-token spellings that exist in the vocabulary ("A" and " A": which one follows depends on the
    tokenizer and the template's last character). The answer is "A" if log p(A) - log p(B) > `margin`, "B" if
    it is < -`margin`, else "tie"; the default margin 0 makes it a forced choice (ties only on exact
    equality), matching the one-token greedy answer of an API judge restricted to {A, B}. The raw output
    carries both log-probs: ``"A (-0.1200 vs -2.3100)"``. A judge prompt longer than the model's context
    gives an "invalid" raw output rather than a silently truncated prompt.

    Loaded with `klq.models.load_causal_lm` (`from_pretrained`, ``trust_remote_code=False``).
    """

    uses_template = True

    def __init__(self, model_path: str, device: str = "auto", dtype: str = "auto", margin: float = 0.0,
                 batch_size: int = 8, use_chat_template: bool | str = "auto",
                 answers: tuple[str, str] = ("A", "B")) -> None:
        from klq.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.model_path = model_path
        self.device = resolve_device(device)
        self.margin = float(margin)
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_causal_lm(model_path, resolve_dtype(dtype, self.device)).to(self.device).eval()
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template == "auto" else bool(use_chat_template)
        if self.use_chat_template and not has_template:
            raise ValueError(f"{model_path!r}: the tokenizer has no chat template")
        self.answer_ids = [self._answer_token_ids(a) for a in answers]
        if set(self.answer_ids[0]) & set(self.answer_ids[1]):
            raise ValueError(f"{model_path!r}: the answers {answers} share a token id (a lower-casing tokenizer?)")
        config = self.model.config
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def __repr__(self) -> str:
        return f"LocalHFJudge(model_path={self.model_path!r}, device={str(self.device)!r}, margin={self.margin})"

    def _answer_token_ids(self, answer: str) -> list[int]:
        unk = self.tokenizer.unk_token_id
        ids = []
        for spelling in (answer, " " + answer):
            encoded = self.tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] != unk and encoded[0] not in ids:
                ids.append(encoded[0])
        if not ids:
            raise ValueError(
                f"{self.model_path!r}: the tokenizer has no single token for the answer {answer!r}; "
                "the local judge compares the log-probabilities of the two one-token answers"
            )
        return ids

    def _prompt(self, text: str) -> str:
        if not self.use_chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def answer_logprobs(self, texts: Sequence[str]) -> list[tuple[float, float] | None]:
        """(log p(A), log p(B)) at the next token after each formatted prompt; None if it is too long."""
        import torch

        from klq.models import position_ids_from

        prompts = [self._prompt(t) for t in texts]
        add_special = not self.use_chat_template
        encoded = self.tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
        out: list[tuple[float, float] | None] = [None] * len(prompts)
        fits = [i for i, ids in enumerate(encoded) if ids and (not self.max_length or len(ids) <= self.max_length)]
        a_ids = torch.tensor(self.answer_ids[0], device=self.device)
        b_ids = torch.tensor(self.answer_ids[1], device=self.device)
        with torch.no_grad():
            for start in range(0, len(fits), self.batch_size):
                rows = fits[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
                ids = batch["input_ids"].to(self.device)
                mask = batch["attention_mask"].to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask),
                                    logits_to_keep=1, use_cache=False).logits[:, -1].float()
                logp = logits.log_softmax(-1)
                lp_a = logp[:, a_ids].logsumexp(-1).tolist()
                lp_b = logp[:, b_ids].logsumexp(-1).tolist()
                for row, a, b in zip(rows, lp_a, lp_b):
                    out[row] = (a, b)
        return out

    def judge(self, requests: list[JudgeRequest]) -> list[str]:
        scores = self.answer_logprobs([_request_text(r) for r in requests])
        return [
            _verdict_from_scores(s[0], s[1], self.margin) if s is not None
            else f"invalid (judge prompt longer than the model's context of {self.max_length} tokens, or empty)"
            for s in scores
        ]


# -------------------------------------------------------------------------------------------- score judges


class _ScoreJudge:
    """Scores prompt + each response and prefers the higher; the two orders cannot disagree."""

    uses_template = False
    margin = 0.0

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:  # pragma: no cover
        raise NotImplementedError

    def judge(self, requests: list[JudgeRequest]) -> list[str]:
        pairs: dict[tuple[str, str], int] = {}
        for r in requests:
            for response in (r.response_a, r.response_b):
                pairs.setdefault((r.prompt, response), len(pairs))
        keys = list(pairs)
        values = self.score([k[0] for k in keys], [k[1] for k in keys]) if keys else []
        if len(values) != len(keys):
            raise RuntimeError(f"{type(self).__name__}: {len(values)} scores for {len(keys)} responses")
        out = []
        for r in requests:
            a = float(values[pairs[(r.prompt, r.response_a)]])
            b = float(values[pairs[(r.prompt, r.response_b)]])
            out.append(_verdict_from_scores(a, b, self.margin))
        return out


class RewardModelJudge(_ScoreJudge):
    """A sequence-classification reward model as the judge: the response with the higher score wins.

    Input ids are the prompt's tokens followed by the response's (each tokenised without special tokens,
    as the trainer lays out a rollout), plus the EOS token when `append_eos` (default: responses are scored
    as finished, which is how the reward model saw complete responses in training; decoded text no longer
    says whether a response stopped). Scores come from `klq.models.sequence_scores` (score head at the last
    attended token). |difference| <= `margin` is a tie.
    """

    def __init__(self, reward_model_path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 32,
                 margin: float = 0.0, append_eos: bool = True) -> None:
        from klq.models import load_scorer, load_tokenizer, resolve_device, resolve_dtype

        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.reward_model_path = reward_model_path
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))
        self.margin = float(margin)
        self.append_eos = append_eos
        self.tokenizer = load_tokenizer(reward_model_path)
        self.model = load_scorer(reward_model_path, resolve_dtype(dtype, self.device),
                                 self.tokenizer.pad_token_id).to(self.device).eval()

    def __repr__(self) -> str:
        return f"RewardModelJudge(reward_model_path={self.reward_model_path!r}, device={str(self.device)!r})"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        from klq.models import sequence_scores

        tok = self.tokenizer
        p_ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        r_ids = tok(list(responses), add_special_tokens=False)["input_ids"]
        seqs = []
        for p, r in zip(p_ids, r_ids, strict=True):
            ids = list(p) + list(r)
            if self.append_eos and (not ids or ids[-1] != tok.eos_token_id):
                ids.append(tok.eos_token_id)
            seqs.append(ids)
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(seqs), self.batch_size):
                batch = tok.pad({"input_ids": seqs[start : start + self.batch_size]}, return_tensors="pt")
                out += sequence_scores(self.model, batch["input_ids"].to(self.device),
                                       batch["attention_mask"].to(self.device)).tolist()
        return out


class GoldJudge(_ScoreJudge):
    """The task's ground-truth reward as the judge (the built-in task has one): higher gold wins."""

    def __init__(self, task: Any, margin: float = 0.0) -> None:
        if not getattr(task, "has_gold_reward", False):
            raise ValueError(f"task {getattr(task, 'name', task)!r} has no gold reward; the gold judge needs one "
                             "(use the built-in task)")
        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.task = task
        self.margin = float(margin)

    def __repr__(self) -> str:
        return f"GoldJudge(task={getattr(self.task, 'name', self.task)!r})"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        scores = self.task.gold_reward(list(prompts), list(responses))
        if scores is None:
            raise ValueError(f"task {self.task.name!r} returned no gold reward")
        return [float(s) for s in scores]


# ------------------------------------------------------------------------------------------------- factory

BACKENDS: tuple[str, ...] = get_args(JudgeBackend)  # ("openai", "local_hf", "reward_model", "gold")
SPEC_KEYS: dict[str, frozenset[str]] = {
    "openai": frozenset({"backend", "model", "max_tokens", "temperature", "system_prompt", "concurrency"}),
    "local_hf": frozenset({"backend", "model", "device", "dtype", "margin", "batch_size", "use_chat_template"}),
    "reward_model": frozenset({"backend", "model", "device", "dtype", "margin", "batch_size", "append_eos"}),
    "gold": frozenset({"backend", "task", "margin"}),
}
SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "base_url", "api_base", "url", "endpoint",
                         "headers", "authorization", "organization"})


# People voting in the dashboard (the API's human judgements): a judge backend that nothing here can run.
HUMAN = "human"


def validate_spec(spec: Mapping[str, Any], *, allow_human: bool = False) -> dict[str, Any]:
    """Check a judge spec without loading anything; returns a plain-dict copy. Raises ValueError on an
    unknown backend, unknown keys, secrets (they come from server settings, never from a spec), or a
    local_hf spec without a model. ``{"backend": "human"}`` (people's votes, cast through the API) is
    accepted, with no other key, only with ``allow_human``: where a spec describes a judgement the API
    records rather than one that `make_judge`, a worker or `klq judge` runs."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a judge spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    backend = spec.get("backend")
    if backend == HUMAN:
        if not allow_human:
            raise ValueError(
                "judge backend 'human' is people voting in the dashboard (POST /judgements with judge "
                "{'backend': 'human'}): it cannot be run by a worker, an experiment, eval.judge or `klq judge`"
            )
        extra = sorted(set(spec) - {"backend"})
        if extra:
            raise ValueError(f"unknown key(s) {', '.join(extra)} for judge backend 'human': it takes none")
        return spec
    if backend not in BACKENDS:
        raise ValueError(f"unknown judge backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    secrets = sorted(k for k in spec if str(k).lower() in SECRET_KEYS)
    if secrets:
        raise ValueError(
            f"judge spec key(s) {', '.join(secrets)} not allowed: the endpoint's base URL and API key come from "
            "the server settings (KLQ_JUDGE_BASE_URL, KLQ_JUDGE_API_KEY), never from a judgement's configuration"
        )
    unknown = sorted(set(spec) - SPEC_KEYS[backend])
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} for judge backend {backend!r}: "
                         f"allowed are {', '.join(sorted(SPEC_KEYS[backend]))}")
    if backend == "local_hf" and not spec.get("model"):
        raise ValueError("judge backend 'local_hf' needs 'model' (an HF hub id or local directory)")
    for key in ("margin", "temperature"):
        if key in spec and (not isinstance(spec[key], int | float) or spec[key] < 0):
            raise ValueError(f"judge spec {key!r} must be a number >= 0")
    for key in ("batch_size", "max_tokens", "concurrency"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 1):
            raise ValueError(f"judge spec {key!r} must be an integer >= 1")
    return spec


def make_judge(spec: Mapping[str, Any], settings: Any = None, task: Any = None):
    """Build a judge from a stored spec, e.g. ``{"backend": "gold"}``, ``{"backend": "openai", "model":
    "gpt-4o-mini"}``, ``{"backend": "local_hf", "model": "Qwen/Qwen2.5-0.5B-Instruct", "device": "cuda"}``,
    ``{"backend": "reward_model", "model": "builtin:reward"}``.

    settings: server settings (see `JudgeSettings.from_any`; None = the environment) for the endpoint's
    base URL, key, default model, timeout and retries. task: the `klq.tasks.Task` for the gold judge
    (default: the task the spec names, "builtin" if none).
    """
    spec = validate_spec(spec)
    backend = spec["backend"]
    if backend == "openai":
        s = JudgeSettings.from_any(settings)
        kwargs = {k: spec[k] for k in ("max_tokens", "temperature", "system_prompt", "concurrency") if k in spec}
        return OpenAIJudge(s.base_url, spec.get("model") or s.model, api_key=s.api_key, timeout=s.timeout,
                           max_retries=s.max_retries, **kwargs)
    model_kwargs = {k: spec[k] for k in ("device", "dtype", "margin", "batch_size") if k in spec}
    if backend == "local_hf":
        if "use_chat_template" in spec:
            model_kwargs["use_chat_template"] = spec["use_chat_template"]
        return LocalHFJudge(spec["model"], **model_kwargs)
    if backend == "reward_model":
        if "append_eos" in spec:
            model_kwargs["append_eos"] = bool(spec["append_eos"])
        return RewardModelJudge(spec.get("model") or "builtin:reward", **model_kwargs)
    if task is None:
        from klq.config import TaskConfig
        from klq.tasks import load_task

        task = load_task(TaskConfig(name=spec.get("task") or "builtin"))
    return GoldJudge(task, margin=float(spec.get("margin", 0.0)))
