"""Rollouts: KV-cache sampling against full forward passes, truncation, re-tokenised reward scoring,
and that each model runs exactly the passes it must (no forward pass done twice)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedTokenizerFast

from klq.config import RolloutConfig
from klq.losses import entropy_of, logprobs_of
from klq.models import Models, ValueModel, load_tokenizer, response_logits, response_logprobs, sequence_scores
from klq.rollout import generate_and_score, sample, truncate_responses
from klq.tasks import Prompt

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(20)] + ["stop"]


def make_tokenizer(words):
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


def gpt2_config(vocab):
    return GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64, eos_token_id=1,
                      pad_token_id=0, bos_token_id=1, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, num_labels=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(WORDS)
    lm = GPT2LMHeadModel(gpt2_config(len(WORDS))).eval()
    # Reward model with its own tokenizer: the same words in another order, so ids differ.
    rm_words = WORDS[:3] + list(reversed(WORDS[3:]))
    rm_tok = make_tokenizer(rm_words)
    rm = GPT2ForSequenceClassification(gpt2_config(len(rm_words))).eval()
    tok.save_pretrained(root / "tok")
    rm_tok.save_pretrained(root / "rmtok")
    return {"tok": load_tokenizer(str(root / "tok")), "lm": lm, "rm": rm, "rm_tok": load_tokenizer(str(root / "rmtok")),
            "value": ValueModel(GPT2ForSequenceClassification(gpt2_config(len(WORDS))).eval())}


def encode(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_sampling_logprobs_match_full_forward_with_left_padding(tiny):
    tok, lm = tiny["tok"], tiny["lm"]
    ids, mask = encode(tok, ["w1 w2 w3 w4 w5", "w6", "w7 w8"])
    torch.manual_seed(1)
    resp, logp = sample(lm, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, temperature=0.7)
    resp, rmask, _ = truncate_responses(resp, tok.eos_token_id, tok.pad_token_id, tok, [])
    full_ids = torch.cat([ids, resp], 1)
    full_mask = torch.cat([mask, rmask.long()], 1)
    with torch.no_grad():
        recomputed = logprobs_of(response_logits(lm, full_ids, full_mask, 10), resp, 0.7)
    assert torch.allclose(recomputed[rmask.bool()], logp[rmask.bool()], atol=1e-5)


@pytest.mark.parametrize("greedy, top_k", [(False, 0), (True, 0), (False, 3)])
def test_sampling_entropy_matches_full_forward(tiny, greedy, top_k):
    """with_entropy: the entropy of softmax(logits / T) at each step (the token records'), the same draw."""
    tok, lm = tiny["tok"], tiny["lm"]
    ids, mask = encode(tok, ["w1 w2 w3 w4 w5", "w6", "w7 w8"])
    torch.manual_seed(2)
    plain = sample(lm, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, temperature=0.7, greedy=greedy, top_k=top_k)
    torch.manual_seed(2)
    resp, logp, entropy = sample(lm, ids, mask, 10, tok.eos_token_id, tok.pad_token_id, temperature=0.7,
                                 greedy=greedy, top_k=top_k, with_entropy=True)
    assert torch.equal(plain[0], resp) and torch.equal(plain[1], logp)
    resp, rmask, _ = truncate_responses(resp, tok.eos_token_id, tok.pad_token_id, tok, [])
    full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, rmask.long()], 1)
    with torch.no_grad():
        recomputed = entropy_of(response_logits(lm, full_ids, full_mask, 10), 0.7)
    on = rmask.bool()
    assert torch.allclose(recomputed[on], entropy[on], atol=1e-5) and (entropy[~on] == 0).all()


def test_response_logprobs_equal_unfused_with_gradient(tiny):
    """klq.models.response_logprobs (the trainer's training forward): the log-probs, entropy and parameter
    gradients of logprobs_of / entropy_of over response_logits."""
    tok, lm = tiny["tok"], tiny["lm"]
    ids, mask = encode(tok, ["w1 w2 w3 w4 w5 w6", "w6", "w7 w8"])
    torch.manual_seed(3)
    resp = torch.randint(3, len(WORDS), (3, 7))
    full_ids, full_mask = torch.cat([ids, resp], 1), torch.cat([mask, torch.ones_like(resp)], 1)
    weights = torch.randn(3, 7)
    params = [p for p in lm.parameters()]
    lp, ent = response_logprobs(lm, full_ids, full_mask, resp, 0.7)
    grads = torch.autograd.grad((lp * weights).sum(), params)
    logits = response_logits(lm, full_ids, full_mask, 7)
    ref_lp = logprobs_of(logits, resp, 0.7)
    ref_grads = torch.autograd.grad((ref_lp * weights).sum(), params)
    assert torch.allclose(lp, ref_lp, atol=1e-5) and not ent.requires_grad
    assert torch.allclose(ent, entropy_of(logits.detach(), 0.7), atol=1e-5)
    assert all(torch.allclose(g, r, atol=1e-6, rtol=1e-4) for g, r in zip(grads, ref_grads))


def test_left_padding_does_not_change_greedy_responses(tiny):
    tok, lm = tiny["tok"], tiny["lm"]
    alone = sample(lm, *encode(tok, ["w3 w4"]), 8, tok.eos_token_id, tok.pad_token_id, greedy=True)
    batched = sample(lm, *encode(tok, ["w3 w4", "w1 w2 w3 w4 w5 w6 w7"]), 8, tok.eos_token_id, tok.pad_token_id,
                     greedy=True)
    assert torch.equal(alone[0][0], batched[0][0])
    assert torch.allclose(alone[1][0], batched[1][0], atol=1e-5)


def test_truncation_after_eos_and_stop_sequences(tiny):
    tok = tiny["tok"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    w = tok.convert_tokens_to_ids
    rows = torch.tensor([
        [w("w1"), eos, w("w2"), w("w3"), eos],          # EOS at 1 -> keep 2 tokens
        [w("w1"), w("w2"), w("w3"), w("w4"), w("w5")],  # no EOS -> keep all, not ended
        [w("w1"), w("stop"), w("w2"), eos, w("w3")],    # stop sequence "stop" ends at 1 -> keep 2
    ])
    ids, mask, ended = truncate_responses(rows, eos, pad, tok, ["stop"])
    assert mask.sum(1).tolist() == [2, 5, 2]
    assert ended.tolist() == [True, False, True]
    assert ids[0, 2:].eq(pad).all() and ids[2, 2:].eq(pad).all()


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_each_model_runs_once_per_chunk_and_reward_is_retokenised(tiny):
    tok = tiny["tok"]
    policy, reference = tiny["lm"], GPT2LMHeadModel(gpt2_config(len(WORDS))).eval()
    m = Models(tok, policy, reference, tiny["value"], tiny["rm"], tiny["rm_tok"], same_tokenizer=False)
    counters = {name: CallCounter(mod) for name, mod in
                [("policy", policy), ("reference", reference), ("value", tiny["value"]), ("reward", tiny["rm"].transformer)]}
    prompts = [Prompt(str(i), f"w{i} w{i + 1}") for i in range(6)]
    cfg = RolloutConfig(response_length=7, missing_eos_penalty=1.0)
    torch.manual_seed(0)
    batch = generate_and_score(m, policy, prompts, cfg, torch.device("cpu"), 16, forward_batch_size=3)
    chunks = 2
    assert counters["reference"].calls == chunks
    assert counters["value"].calls == chunks
    assert counters["reward"].calls == chunks  # its backbone; the score head reads the last token
    # Policy: one prefill + at most T-1 cached steps per chunk; never a separate log-prob pass.
    assert counters["policy"].calls <= chunks * cfg.response_length
    # Reward model scores the re-tokenised text exactly as if scoring the text directly.
    texts = [p.text + r for p, r in zip(prompts, batch.responses)]
    enc = tiny["rm_tok"](texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        direct = sequence_scores(tiny["rm"], enc["input_ids"], enc["attention_mask"])
    assert torch.allclose(batch.raw_scores, direct, atol=1e-5)
    # Missing-EOS penalty: subtracted exactly where the response did not end.
    assert torch.allclose(batch.scores, batch.raw_scores - (~batch.ended).float())
    assert batch.logp_old[batch.response_mask == 0].eq(0).all()


def test_groups_of_responses_share_their_prompt(tiny):
    """num_generations k: k adjacent rows per prompt, the same prompt ids, each row sampled and scored on
    its own (k = 1 is the plain batch)."""
    tok = tiny["tok"]
    m = Models(tok, tiny["lm"], tiny["lm"], tiny["value"], tiny["rm"], tiny["rm_tok"], same_tokenizer=False)
    prompts = [Prompt("a", "w1 w2 w3"), Prompt("b", "w4"), Prompt("c", "w5 w6")]
    cfg = RolloutConfig(response_length=6)
    torch.manual_seed(0)
    batch = generate_and_score(m, tiny["lm"], prompts, cfg, torch.device("cpu"), 16, forward_batch_size=4,
                               num_generations=3)
    assert len(batch) == 9 and batch.num_generations == 3
    assert [p.id for p in batch.prompts] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for g in range(3):
        rows = slice(3 * g, 3 * g + 3)
        assert (batch.query_ids[rows] == batch.query_ids[3 * g]).all()
        assert (batch.query_mask[rows] == batch.query_mask[3 * g]).all()
    assert len({tuple(r) for r in batch.response_ids.tolist()}) > 3  # sampled independently, not copied
    single = generate_and_score(m, tiny["lm"], prompts, cfg, torch.device("cpu"), 16, forward_batch_size=4)
    assert len(single) == 3 and single.num_generations == 1 and single.group_ids.tolist() == [0, 1, 2]


@pytest.mark.parametrize("vocab", [7, 300, 1000])
def test_sampled_tokens_follow_the_softmax(vocab):
    """The sampler draws from softmax(logits / T) (checked against the exact probabilities), never draws a
    token that top-k / top-p removed, and reports the log-prob of the drawn token under the full softmax."""
    from klq.rollout import _filter_logits, sample

    torch.manual_seed(0)
    logits = torch.randn(vocab) * 2

    class Fixed(torch.nn.Module):  # a "model" whose next-token logits are always `logits`
        def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, **_):
            out = logits.expand(input_ids.shape[0], input_ids.shape[1], vocab)
            return type("Out", (), {"logits": out, "cache": None})()

    rows = 4000
    ids = torch.ones(rows, 2, dtype=torch.long)
    tokens, logp = sample(Fixed(), ids, torch.ones_like(ids), 5, eos_token_id=-1, pad_token_id=0,
                          temperature=0.8)
    probs = torch.softmax(logits / 0.8, -1)
    freq = torch.bincount(tokens.flatten(), minlength=vocab).double() / tokens.numel()
    assert 0.5 * (freq - probs.double()).abs().sum() < 0.03  # total variation distance, 20k draws
    assert torch.allclose(logp, torch.log_softmax(logits / 0.8, -1)[tokens], atol=1e-5)
    kept = torch.isfinite(_filter_logits((logits / 0.8)[None], 5, 0.9)[0])
    tokens, _ = sample(Fixed(), ids[:500], torch.ones_like(ids[:500]), 5, eos_token_id=-1, pad_token_id=0,
                       temperature=0.8, top_k=5, top_p=0.9)
    assert kept[tokens].all()
