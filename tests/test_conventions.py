"""The `convention: paper` preset and its switches, and clean stop sequences (issue 18).

Every expected value is computed here from the KLQ authors' fork's equations (github.com/jr-brown/trl,
trl/trainer/klq_trainer.py and TRL 0.12's PPOTrainer), written out as explicit loops over tokens:
    L      index of the last response token (EOS, or the last token of a stop sequence); n = L + 1
    end    the "slot after EOS" n where n < T, else L (a response of full length has no extra slot)
    V_t    kept for t <= end, 0 after (padding_mask_plus_one)
    Q_t    tau * (logp_old_t - logp_ref_t) + V_t for t <= L;  Q_n = V_n (log-ratio 0 after EOS)
    r_t    R at t = end (KLQ); PPO adds -kl_coef * (logp_old_t - logp_ref_t) for t <= L
    KLQ    delta_t = r_t + gamma V_{t+1} - Q_t, Delta_t = delta_t + gamma lam Delta_{t+1}, G_t = Q_t + alpha Delta_t
           with Delta whitened over the response tokens and set to 0 at the slot after EOS
    PPO    delta_t = r_t + gamma V_{t+1} - V_t, A by the same recursion, returns A + V, A whitened over the
           response tokens and 0 after them
    loss   KLQ: mean over t <= end; clipped variants max of squared errors without 1/2
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

from klq import losses as L
from klq.algorithms import make_algorithm
from klq.config import PAPER_CONVENTION, RunConfig
from klq.rollout import Rollout, cut_responses

F64 = torch.float64


# ------------------------------------------------------------------------------------------ batch data


def make_batch(seed: int, lengths=(3, 7, 1, 5, 6), T: int = 7) -> Rollout:
    """A rollout with variable lengths (one of full length T: no slot after EOS); values are real one slot
    past the end (as the rollout keeps them) and junk further on, log-probs 0 after the end."""
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths], dtype=F64)
    logp_ref = -torch.rand(B, T, generator=gen, dtype=F64) - 0.1
    logp_old = logp_ref + 0.7 * torch.randn(B, T, generator=gen, dtype=F64)
    values = torch.randn(B, T, generator=gen, dtype=F64)
    keep = L.after_end_mask(mask)
    return Rollout(
        prompts=[], query_ids=torch.zeros(B, 1, dtype=torch.long), query_mask=torch.ones(B, 1, dtype=torch.long),
        response_ids=torch.zeros(B, T, dtype=torch.long), response_mask=mask,
        logp_old=logp_old * mask, logp_ref=logp_ref * mask,
        values_old=torch.where(keep, values, 99.0),  # 99: must never be read
        raw_scores=torch.randn(B, generator=gen, dtype=F64), scores=torch.randn(B, generator=gen, dtype=F64),
        ended=torch.tensor([n < T for n in lengths]), responses=[""] * B,
    )


def cfg_of(**fields) -> RunConfig:
    from klq.config import expand_dotted

    return RunConfig.model_validate(expand_dotted(fields))


def whiten(x: torch.Tensor, where: list[list[bool]]) -> torch.Tensor:
    vals = [x[b, t].item() for b in range(x.shape[0]) for t in range(x.shape[1]) if where[b][t]]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if where[b][t]:
                out[b, t] = (x[b, t] - mean) / math.sqrt(var + 1e-8)
    return out


def fork_klq_targets(batch: Rollout, tau, gamma, lam, alpha, whiten_deltas, after_eos=True):
    """(targets, slots) by the fork's equations (module docstring); after_eos False: ours (R at L)."""
    B, T = batch.response_mask.shape
    lengths = [int(n) for n in batch.response_mask.sum(1)]
    ends = [(n if n < T else n - 1) if after_eos else n - 1 for n in lengths]
    Q = torch.zeros(B, T, dtype=F64)
    D = torch.zeros(B, T, dtype=F64)
    for b in range(B):
        V = [batch.values_old[b, t].item() if t <= ends[b] else 0.0 for t in range(T)] + [0.0]
        for t in range(ends[b] + 1):
            ratio = batch.logp_old[b, t] - batch.logp_ref[b, t] if t < lengths[b] else 0.0
            Q[b, t] = tau * ratio + V[t]
        acc = 0.0
        for t in range(ends[b], -1, -1):
            r = batch.scores[b].item() if t == ends[b] else 0.0
            acc = r + gamma * V[t + 1] - Q[b, t].item() + gamma * lam * acc
            D[b, t] = acc
    response = [[t < lengths[b] for t in range(T)] for b in range(B)]
    if whiten_deltas:
        D = whiten(D, response)
    slots = [[t <= ends[b] for t in range(T)] for b in range(B)]
    G = torch.tensor([[Q[b, t].item() + alpha * D[b, t].item() if slots[b][t] else 0.0 for t in range(T)]
                      for b in range(B)], dtype=F64)
    return G, torch.tensor(slots, dtype=F64)


# ------------------------------------------------------------------------------------------ the preset


def test_paper_preset_fills_every_convention_and_each_stays_settable():
    paper = RunConfig.model_validate({"convention": "paper"})
    assert (paper.terminal_slot, paper.klq.whiten_deltas, paper.klq.clipped_loss_half, paper.train.max_grad_norm,
            paper.train.minibatch_size, paper.train.lr_schedule_unit) == (
        "after_eos", True, False, None, paper.train.batch_size, "iteration")
    ours = RunConfig()
    assert (ours.convention, ours.terminal_slot, ours.klq.whiten_deltas, ours.klq.clipped_loss_half,
            ours.train.max_grad_norm, ours.train.minibatch_size, ours.train.lr_schedule_unit) == (
        "klq-lab", "last_token", False, True, 1.0, 16, "update")
    assert ours.rollout.penalize_stop_sequences is True  # the fork's behaviour, in both conventions
    # Each switch on its own, and a field the config sets wins over the preset.
    mixed = RunConfig.model_validate({"convention": "paper", "klq": {"whiten_deltas": False},
                                      "train": {"batch_size": 32, "micro_batch_size": 8, "max_grad_norm": 0.5}})
    assert (mixed.klq.whiten_deltas, mixed.train.max_grad_norm, mixed.train.minibatch_size) == (False, 0.5, 32)
    assert RunConfig.model_validate({"terminal_slot": "after_eos"}).klq.whiten_deltas is False
    # The stored config is explicit and reproduces itself; switching convention by override refills the preset.
    assert RunConfig.model_validate(json.loads(paper.model_dump_json())) == paper
    assert RunConfig().with_overrides({"convention": "paper"}) == paper
    assert paper.with_overrides({"convention": "klq-lab"}) == ours
    assert set(PAPER_CONVENTION) == {"terminal_slot", "klq.whiten_deltas", "klq.clipped_loss_half",
                                     "train.max_grad_norm", "train.minibatch_size", "train.lr_schedule_unit"}
    with pytest.raises(ValueError, match="convention"):
        RunConfig.model_validate({"convention": "trl"})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("whiten_deltas", [False, True])
def test_terminal_slot_after_eos_klq_targets_follow_the_fork(seed, whiten_deltas):
    batch = make_batch(seed)
    kw = {"kl_coef": 0.1, "gamma": 0.97, "lam": 0.9, "klq.alpha": 0.8, "klq.whiten_deltas": whiten_deltas}
    fork, slots = fork_klq_targets(batch, 0.1, 0.97, 0.9, 0.8, whiten_deltas)
    got, _ = make_algorithm(cfg_of(terminal_slot="after_eos", **kw)).targets(batch)
    torch.testing.assert_close(got["targets"], fork, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["slots"].to(F64), slots)
    # The default puts R at the last token and has no slot after it.
    ours, _ = fork_klq_targets(batch, 0.1, 0.97, 0.9, 0.8, whiten_deltas, after_eos=False)
    default, _ = make_algorithm(cfg_of(**kw)).targets(batch)
    torch.testing.assert_close(default["targets"], ours, rtol=1e-10, atol=1e-12)
    assert "slots" not in default


@pytest.mark.parametrize("seed", [0, 1])
def test_paper_preset_with_unit_lambda_gamma_alpha_gives_monte_carlo_returns_at_the_forks_slot(seed):
    """G_t = R - tau * sum_{t < k <= L} k1_k on the response tokens, and G = R at the slot after EOS (where the
    fork puts R). The preset's Delta whitening is switched off here: whitening is not a return."""
    batch = make_batch(seed)
    cfg = cfg_of(convention="paper", kl_coef=0.2, gamma=1.0, lam=1.0, **{"klq.alpha": 1.0, "klq.whiten_deltas": False})
    got, _ = make_algorithm(cfg).targets(batch)
    B, T = batch.response_mask.shape
    for b in range(B):
        n = int(batch.response_mask[b].sum())
        k1 = [(batch.logp_old[b, k] - batch.logp_ref[b, k]).item() for k in range(n)]
        R = batch.scores[b].item()
        for t in range(n):
            assert got["targets"][b, t].item() == pytest.approx(R - 0.2 * sum(k1[t + 1:]), abs=1e-10)
        if n < T:
            assert got["targets"][b, n].item() == pytest.approx(R, abs=1e-12)
        assert got["targets"][b, min(n + 1, T):].eq(0).all()


@pytest.mark.parametrize("whiten", [True, False])
def test_terminal_slot_after_eos_ppo_follows_trl(whiten):
    batch = make_batch(3)
    kl, gamma, lam = 0.05, 0.95, 0.9
    cfg = cfg_of(algorithm="ppo", terminal_slot="after_eos", kl_coef=kl, gamma=gamma, lam=lam,
                 **{"ppo.whiten_advantages": whiten})
    got, _ = make_algorithm(cfg).targets(batch)
    B, T = batch.response_mask.shape
    A = torch.zeros(B, T, dtype=F64)
    ret = torch.zeros(B, T, dtype=F64)
    response = []
    for b in range(B):
        n = int(batch.response_mask[b].sum())
        end = n if n < T else n - 1
        V = [batch.values_old[b, t].item() if t <= end else 0.0 for t in range(T)] + [0.0]
        acc = 0.0
        for t in range(end, -1, -1):
            r = (-kl * (batch.logp_old[b, t] - batch.logp_ref[b, t]).item() if t < n else 0.0)
            r += batch.scores[b].item() if t == end else 0.0
            acc = r + gamma * V[t + 1] - V[t] + gamma * lam * acc
            A[b, t], ret[b, t] = acc, acc + V[t]
        response.append([t < n for t in range(T)])
    A = whiten_fn(A, response) if whiten else A * torch.tensor(response, dtype=F64)
    torch.testing.assert_close(got["returns"], ret, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["advantages"], A, rtol=1e-10, atol=1e-12)


whiten_fn = whiten


def fork_value_clipped(q, q_old, G, slots, c):
    num = den = 0.0
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            if slots[b, t]:
                clipped = min(max(q[b, t].item(), q_old[b, t].item() - c), q_old[b, t].item() + c)
                num += max((q[b, t].item() - G[b, t].item()) ** 2, (clipped - G[b, t].item()) ** 2)
                den += 1
    return num / den


def test_clipped_loss_without_the_half_is_the_forks_value_clipped_loss():
    batch = make_batch(4)
    gen = torch.Generator().manual_seed(5)
    logp = batch.logp_old + 0.3 * torch.randn(batch.logp_old.shape, generator=gen, dtype=F64)
    values = batch.values_old + 0.5 * torch.randn(batch.values_old.shape, generator=gen, dtype=F64)
    mask = batch.response_mask

    def loss(**fields):
        algo = make_algorithm(cfg_of(kl_coef=0.1, **fields))
        targets, _ = algo.targets(batch)
        mb = {"logp_old": batch.logp_old, "logp_ref": batch.logp_ref, "values_old": batch.values_old, **targets}
        return algo.loss(logp, values, mb, mask)[0].item(), targets

    fork, targets = loss(**{"klq.value_clip": 0.2, "klq.clipped_loss_half": False})
    q = 0.1 * (logp - batch.logp_ref) + values
    assert fork == pytest.approx(fork_value_clipped(q, targets["q_old"], targets["targets"], mask, 0.2), rel=1e-10)
    ours, _ = loss(**{"klq.value_clip": 0.2})
    assert ours == pytest.approx(fork / 2, rel=1e-12)
    # Plain l2 keeps its 1/2 either way (the fork's l2_loss has it too).
    assert loss(**{"klq.clipped_loss_half": False})[0] == loss()[0]


def test_klq_loss_at_the_slot_after_eos_regresses_the_value_alone():
    """Under after_eos the KLQ loss covers t <= end; at the slot after EOS Q_theta = V_theta (the fork masks
    both log-probs there), whatever the current policy's log-prob of the pad token is."""
    batch = make_batch(6)
    algo = make_algorithm(cfg_of(terminal_slot="after_eos", kl_coef=0.1))
    targets, _ = algo.targets(batch)
    mb = {"logp_old": batch.logp_old, "logp_ref": batch.logp_ref, "values_old": batch.values_old, **targets}
    gen = torch.Generator().manual_seed(1)
    logp = batch.logp_old + 0.2 * torch.randn(batch.logp_old.shape, generator=gen, dtype=F64)
    values = torch.randn(batch.values_old.shape, generator=gen, dtype=F64)
    got = algo.loss(logp, values, mb, batch.response_mask)[0].item()
    num = den = 0.0
    for b in range(logp.shape[0]):
        n = int(batch.response_mask[b].sum())
        for t in range(min(n + 1, logp.shape[1])):
            ratio = (logp[b, t] - batch.logp_ref[b, t]).item() if t < n else 0.0
            num += 0.5 * (0.1 * ratio + values[b, t].item() - targets["targets"][b, t].item()) ** 2
            den += 1
    assert got == pytest.approx(num / den, rel=1e-10)


# ------------------------------------------------------------------------------------- stop sequences

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(8)] + ["ab", "a", "b", "c"]
STOP = "b c"  # two tokens on its own; inside "ab c" the tokenizer has split it differently


def word_tokenizer(words=WORDS):
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def script_rows(tok):
    w = tok.convert_tokens_to_ids
    eos = tok.eos_token_id
    return [
        [w("w1"), w("b"), w("c"), w("w2"), eos],  # the stop sequence's own tokens: found on token ids
        [w("w1"), w("ab"), w("c"), w("w2"), w("w3")],  # "w1 ab c": found on the text only
        [w("w1"), w("w2"), eos, w("b"), w("c")],  # EOS first
        [w("w1"), w("w2"), w("w3"), w("w4"), w("w5")],  # runs out of length
    ]


EXPECTED = {"lengths": [3, 3, 3, 5], "stopped_by": [STOP, STOP, "eos", "length"],
            "texts": ["w1", "w1 a", "w1 w2", "w1 w2 w3 w4 w5"]}


def test_stop_sequence_is_cut_on_token_ids_and_on_text_and_flagged():
    tok = word_tokenizer()
    rows = torch.tensor(script_rows(tok))
    cut = cut_responses(rows, tok.eos_token_id, tok.pad_token_id, tok, [STOP])
    assert cut.mask.sum(1).tolist() == EXPECTED["lengths"]  # the stop tokens stay in the trajectory, like EOS
    assert cut.ended.tolist() == [True, True, True, False]
    assert cut.stopped_by == EXPECTED["stopped_by"]
    assert cut.texts == EXPECTED["texts"]
    w = tok.convert_tokens_to_ids
    assert cut.scored_ids == [[w("w1")], [w("w1"), w("a")], None, None]  # "ab" straddles: its "a" re-tokenised


class Scripted(torch.nn.Module):
    """A 'policy' whose greedy response to each row is a fixed token script (sampling needs no real LM)."""

    def __init__(self, script: list[list[int]], vocab: int) -> None:
        super().__init__()
        self.script, self.vocab = torch.tensor(script), vocab

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **_):
        step = 0 if cache is None else cache
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1].scatter_(1, self.script[:, step : step + 1], 10.0)
        return type("Out", (), {"logits": logits, "cache": step + 1})()


def tiny_gpt2(vocab, head=False):
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=vocab, n_positions=32, eos_token_id=1,
                        pad_token_id=0, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, num_labels=1)
    return (GPT2ForSequenceClassification if head else GPT2LMHeadModel)(config).eval()


def score_of(rm, tok, ids: list[int]) -> float:
    from klq.models import sequence_scores

    t = torch.tensor([ids])
    with torch.no_grad():
        return sequence_scores(rm, t, torch.ones_like(t)).item()


@pytest.mark.parametrize("same_tokenizer", [True, False])
@pytest.mark.parametrize("penalize", [True, False])
def test_reward_model_scores_the_response_without_its_stop_sequence(same_tokenizer, penalize):
    from klq.config import RolloutConfig
    from klq.models import Models, ValueModel
    from klq.rollout import generate_and_score
    from klq.tasks import Prompt

    torch.manual_seed(0)
    tok = word_tokenizer()
    rm_words = WORDS[:3] + list(reversed(WORDS[3:]))
    rm_tok = tok if same_tokenizer else word_tokenizer(rm_words)
    rm = tiny_gpt2(len(WORDS), head=True)
    rows = script_rows(tok)
    m = Models(tok, Scripted(rows, len(WORDS)), tiny_gpt2(len(WORDS)), ValueModel(tiny_gpt2(len(WORDS), head=True)),
               rm, rm_tok, same_tokenizer=same_tokenizer)
    prompts = [Prompt(str(i), f"w{i} w{i + 1}") for i in range(len(rows))]
    cfg = RolloutConfig(response_length=5, stop_sequences=[STOP], missing_eos_penalty=1.0,
                        penalize_stop_sequences=penalize)
    batch = generate_and_score(m, m.policy, prompts, cfg, torch.device("cpu"), 16, forward_batch_size=2, greedy=True)
    assert batch.responses == EXPECTED["texts"] and batch.stopped_by == EXPECTED["stopped_by"]
    assert batch.response_mask.sum(1).tolist() == EXPECTED["lengths"]
    for i, (p, kept) in enumerate(zip(prompts, batch.responses, strict=True)):
        if same_tokenizer:  # the policy's own ids: the prompt's, then the response's up to the stop sequence
            full = tok(p.text)["input_ids"] + batch.response_ids[i, : EXPECTED["lengths"][i]].tolist()
            scored = full if i >= 2 else tok(p.text)["input_ids"] + (tok(kept)["input_ids"])
        else:
            scored = rm_tok(p.text + kept, add_special_tokens=False)["input_ids"]
        assert batch.raw_scores[i].item() == pytest.approx(score_of(rm, rm_tok, scored), abs=1e-5)
    # The check can tell: the rows cut at the stop sequence would score otherwise with it.
    with_stop = tok(prompts[0].text)["input_ids"] + rows[0][:3]
    if same_tokenizer:
        assert batch.raw_scores[0].item() != pytest.approx(score_of(rm, tok, with_stop), abs=1e-4)
    penalty = torch.tensor([1.0 if penalize else 0.0, 1.0 if penalize else 0.0, 0.0, 1.0])
    torch.testing.assert_close(batch.scores, batch.raw_scores - penalty)


def test_the_judge_sees_responses_without_their_stop_sequence(monkeypatch):
    import klq.models
    from klq.judge.generate import generate_responses

    tok = word_tokenizer()
    rows = script_rows(tok)
    monkeypatch.setattr(klq.models, "load_tokenizer", lambda name: tok)
    monkeypatch.setattr(klq.models, "load_causal_lm", lambda name, dtype: Scripted(rows, len(WORDS)))
    texts = generate_responses("scripted-policy", None, [f"w{i}" for i in range(len(rows))], 5, greedy=True,
                               device="cpu", stop_sequences=[STOP])
    assert texts == EXPECTED["texts"]


def test_stored_samples_have_no_stop_sequence_and_keep_stopped_by(tmp_path):
    """The trainer's held-out samples (JSONL sink) and the worker's database sink (the `extra` column)."""
    from accelerate import Accelerator

    from backend import store
    from backend.db import Database
    from backend.migrate import upgrade
    from klq.models import Models, ValueModel
    from klq.sinks import JSONLSink, read_jsonl
    from klq.tasks import Prompt
    from klq.trainer import _evaluate
    from worker.sink import DatabaseSink

    torch.manual_seed(0)
    tok = word_tokenizer()
    rows = script_rows(tok)
    m = Models(tok, Scripted(rows, len(WORDS)), tiny_gpt2(len(WORDS)), ValueModel(tiny_gpt2(len(WORDS), head=True)),
               tiny_gpt2(len(WORDS), head=True), tok, same_tokenizer=True)
    prompts = [Prompt(str(i), f"w{i} w{i + 1}") for i in range(len(rows))]
    cfg = cfg_of(device="cpu", **{"rollout.response_length": 5, "rollout.stop_sequences": [STOP]})
    sink = JSONLSink(tmp_path / "run")
    _evaluate(cfg, m, m.policy, prompts, torch.device("cpu"), None, sink, 7, Accelerator(cpu=True), None)  # no in-training judge
    sink.close()
    stored = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert [s["response"] for s in stored] == EXPECTED["texts"]
    assert [s["stopped_by"] for s in stored] == EXPECTED["stopped_by"]

    url = f"sqlite:///{tmp_path / 'klq.db'}"
    upgrade(url)
    db = Database(url)
    with db.write_session() as session:
        run_id = store.create_run(session, cfg).id
        assert store.acquire_lease(session, run_id, "test-worker")  # the sink writes as the run's worker
    from klq.sinks import SampleRecord

    DatabaseSink(db, run_id, "test-worker").log_samples(7, [SampleRecord(**s) for s in stored])
    with db.session() as session:
        samples, _ = store.list_samples(session, run_id)
    assert [s.response for s in samples] == EXPECTED["texts"]
    assert [s.extra for s in samples] == [{"stopped_by": by} for by in EXPECTED["stopped_by"]]


# ------------------------------------------------------------------------------------- ready configs

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"
READY = ["tldr-pythia1b-klq", "tldr-pythia1b-ppo", "hh-gpt2large-klq", "hh-gpt2large-ppo"]
TEXTS = [f"SUBREDDIT: r/test\n\nTITLE: post {i}\n\nPOST: my day {i} was long and good\n\nTL;DR: a day"
         for i in range(12)] + [f"\n\nHuman: how do I cook rice {i}?\n\nAssistant: boil it." for i in range(12)]


def stand_ins(root, arch: str) -> tuple[str, str]:
    """A tiny byte-level BPE tokenizer and tiny SFT (causal LM) and reward (scalar head) models of the given
    architecture, saved in HF format: local stand-ins for Pythia-1B (gpt_neox) and GPT2-large (gpt2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<pad>")
    common = {"vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
              "bos_token_id": tok.eos_token_id, "num_labels": 1}
    if arch == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=256, **common)
        classes = (GPTNeoXForCausalLM, GPTNeoXForSequenceClassification)
    else:
        config = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=256, **common)
        classes = (GPT2LMHeadModel, GPT2ForSequenceClassification)
    paths = []
    for name, cls in zip(("sft", "reward"), classes, strict=True):
        torch.manual_seed(0)
        path = root / f"{arch}-{name}"
        cls(config).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def dataset_file(root, task: str) -> str:
    path = root / f"{task}.jsonl"
    rows = ([{"prompt": t.rsplit("TL;DR:", 1)[0] + "TL;DR:"} for t in TEXTS[:12]] if task == "tldr"
            else [{"chosen": t} for t in TEXTS[12:]])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stand_in_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand-ins")
    return {"tldr": (*stand_ins(root, "gpt_neox"), dataset_file(root, "tldr")),
            "hh": (*stand_ins(root, "gpt2"), dataset_file(root, "hh"))}


TINY = {"train.total_episodes": 8, "train.batch_size": 4, "train.micro_batch_size": 2, "rollout.response_length": 6,
        "task.max_prompt_length": 64, "task.num_eval_prompts": 2, "num_gpus": 1, "device": "cpu",
        "model.dtype": "float32", "eval_interval": 1, "checkpoint_interval": 2, "train.learning_rate": 1e-3}


def test_ready_configs_validate_with_the_papers_settings():
    from klq.config import load_config

    for name in READY:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert cfg.convention == "paper" and cfg.algorithm == name.rsplit("-", 1)[1]
        assert (cfg.kl_coef, cfg.train.num_epochs, cfg.train.learning_rate) == (0.05, 4, 1.41e-5)
        assert cfg.train.minibatch_size == cfg.train.batch_size == 48 and cfg.num_gpus == 4
        assert cfg.train.num_iterations * cfg.train.batch_size * cfg.num_gpus == pytest.approx(75_000, rel=0.01)
        assert cfg.task.name == name.split("-")[0]
    assert load_config(CONFIGS / "hh-gpt2large-klq.yaml").rollout.stop_sequences == ["\n\nHuman:"]
    assert "cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr" in (CONFIGS / "tldr-pythia1b-ppo.yaml").read_text()


@pytest.mark.parametrize("name", READY)
def test_ready_config_runs_two_iterations_on_local_stand_ins(name, stand_in_models, tmp_path, monkeypatch):
    from accelerate import Accelerator

    from klq.config import load_config
    from klq.sinks import read_jsonl
    from klq.trainer import train

    clips = []
    original = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, *a, **k: clips.append(1) or original(self, *a, **k))
    policy, reward, dataset = stand_in_models[name.split("-")[0]]
    cfg = load_config(CONFIGS / f"{name}.yaml", {**TINY, "model.policy": policy, "model.reward": reward,
                                                 "task.dataset": dataset})
    assert cfg.train.minibatch_size == 4  # one minibatch per batch: the preset follows the smaller batch
    result = train(cfg, tmp_path)
    assert result.iterations_done == 2 and result.final_checkpoint is not None
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["objective/kl"]) for r in rows)
    # The fork's schedule: linear over the iterations, stepped once per iteration (lr_k = lr0 (1 - (k-1)/N)).
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 0.5e-3])
    assert clips == []  # no gradient-norm clipping
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert samples and all(s["stopped_by"] in ("eos", "length", *cfg.rollout.stop_sequences) for s in samples)
    assert not any("\n\nHuman:" in s["response"] for s in samples)


def test_klq_lab_schedule_and_clipping_on_a_ready_config(stand_in_models, tmp_path, monkeypatch):
    """The same run with ours switched back on one by one: LR stepped per update, grad-norm clipping, 2 minibatches."""
    from accelerate import Accelerator

    from klq.config import load_config
    from klq.sinks import read_jsonl
    from klq.trainer import train

    clips = []
    original = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, *a, **k: clips.append(1) or original(self, *a, **k))
    policy, reward, dataset = stand_in_models["tldr"]
    cfg = load_config(CONFIGS / "tldr-pythia1b-klq.yaml", {
        **TINY, "model.policy": policy, "model.reward": reward, "task.dataset": dataset,
        "train.lr_schedule_unit": "update", "train.max_grad_norm": 1.0, "train.minibatch_size": 2})
    train(cfg, tmp_path)
    updates = cfg.train.num_epochs * 2  # per iteration
    assert len(clips) == 2 * updates
    # Linear over all 2 * updates optimiser steps; logged after each iteration's updates.
    assert [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == pytest.approx([0.5e-3, 0.0])


def test_experiment_runs_and_results_carry_the_convention(tmp_path):
    from backend import store
    from backend.db import Database
    from backend.migrate import upgrade
    from backend.schemas import ExperimentGrid

    url = f"sqlite:///{tmp_path / 'klq.db'}"
    upgrade(url)
    db = Database(url)
    base = RunConfig.model_validate({"convention": "paper", "train": {"batch_size": 32, "micro_batch_size": 8}})
    with db.write_session() as session:
        experiment, runs = store.create_experiment(
            session, name="paper", base=base, grid=ExperimentGrid(kl_coefs=[0.05], seeds=[1]), judge={"backend": "gold"})
    # Each run's stored config (the run page's Config tab) says which convention and holds its values.
    assert {r.config["convention"] for r in runs} == {"paper"}
    assert {(r.config["terminal_slot"], r.config["train"]["minibatch_size"]) for r in runs} == {("after_eos", 32)}
    with db.session() as session:
        assert store.experiment_results(session, experiment.id).convention == "paper"


def test_launch_form_loads_a_paper_config_with_the_conventions_values():
    """The dashboard's launch form sends every field; loading a ready config must fill the convention's
    values into the fields it leaves out (as the server would), so what is launched is the paper's."""
    from frontend import logic
    from klq.config import load_config

    fields = logic.form_fields(logic.local_schema_defs())
    import yaml

    data = yaml.safe_load((CONFIGS / "tldr-pythia1b-klq.yaml").read_text())
    sent = logic.config_from_values(fields, logic.values_from_config(fields, data))
    assert RunConfig.model_validate(sent) == load_config(CONFIGS / "tldr-pythia1b-klq.yaml")
    # Every field at klq-lab's value under convention: paper (choosing "paper" alone in the form) is refused.
    plain = logic.config_from_values(fields, logic.values_from_config(fields, {}))
    with pytest.raises(ValueError, match="convention 'paper' but every field it governs"):
        RunConfig.model_validate({**plain, "convention": "paper"})
