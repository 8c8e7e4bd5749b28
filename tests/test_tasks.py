"""Tasks: the built-in offline task (assets, gold reward, prompts) and the real-data prompt loaders."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
import torch

from klq.config import TaskConfig
from klq.models import sequence_scores
from klq.tasks import Prompt, Task, filter_prompts_by_length, load_task, resolve_model_path
from klq.tasks import builtin as B
from klq.tasks.builtin import assets, gold, judge_model, training
from klq.tasks.datasets import DatasetError, DatasetTask, hh_question

PIZZA = "review the pizza :"


# ---------------------------------------------------------------------------------------------------
# Gold reward (pure Python, no assets)
# ---------------------------------------------------------------------------------------------------


def test_gold_reward_orders_handwritten_responses():
    # From best to worst, as a person would rank them.
    ranked = [
        "the pizza was hot and crispy .",  # on topic, two fitting adjectives, clean end
        "the pizza was hot and delicious .",  # generic praise earns a little less
        "the pizza was hot .",  # one fitting adjective
        "the pizza was hot and crispy",  # forgot the "."
        "the pizza was hot and hot .",  # repetition
        "the coffee was hot .",  # wrong subject
        "the pizza was cold and soggy .",  # negative
        "the pizza was hot . the pizza was",  # rambles on after the sentence
        "the pizza was crispy crispy crispy crispy",  # degenerate repetition
        "",  # nothing at all
    ]
    scores = [B.gold_score(PIZZA, r) for r in ranked]
    assert scores == sorted(scores, reverse=True), list(zip(ranked, scores))
    assert len(set(scores)) == len(scores)
    assert scores[0] == 1.0 and scores[-1] == -1.0
    # A trivially short response is not a good optimum.
    assert B.gold_score(PIZZA, ".") < 0 < B.gold_score(PIZZA, "the pizza was good .")
    # Fit depends on the subject in the prompt.
    assert B.gold_score("review the coffee :", "the coffee was strong .") > B.gold_score(
        "review the cake :", "the cake was strong ."
    )


def test_gold_reward_text_handling():
    good = "the pizza was hot and crispy ."
    same = [good + " <eos>", good + " <eos> <pad> <pad>", "The pizza was hot and crispy.", "  " + good + "\n"]
    assert B.gold_reward([PIZZA] * len(same), same) == [1.0] * len(same)
    assert B.gold_score(PIZZA, good + " <eos> the car was bad") == 1.0  # text after EOS ignored
    for text in ["<unk> <unk>", "zebra quantum .", "hot " * 40, ". . . ."]:
        assert -1.0 <= B.gold_score(PIZZA, text) <= 1.0
    assert B.gold_score("no subject here", "the pizza was hot .") <= B.gold_score(
        PIZZA, "the pizza was hot ."
    )
    with pytest.raises(ValueError):
        B.gold_reward([PIZZA], [])
    parts = B.gold_breakdown(PIZZA, "the pizza was hot and hot .")
    assert parts["repetition"] < 0 and parts["grammar"] > 0
    assert "pizza" in B.describe() and "1.0" in B.describe()


def test_demonstrations_fit_the_response_length():
    rng = random.Random(0)
    for i in range(2000):
        subject = B.SUBJECTS[i % len(B.SUBJECTS)]
        words, ended = B.demonstration(subject, rng.random(), rng)
        assert len(words) + int(ended) <= B.RESPONSE_LENGTH
        assert not ended or len(words) < B.RESPONSE_LENGTH
        assert set(words) <= set(B.vocabulary())
        bad, bad_ended = B.corrupt(words, rng, subtle=bool(i % 2))
        assert len(bad) + int(bad_ended) <= B.RESPONSE_LENGTH
        assert set(bad) <= set(B.vocabulary())
    # Quality is a real knob: better demonstrations score higher on average.
    low = [B.gold_score(PIZZA, " ".join(B.demonstration("pizza", 0.0, rng)[0])) for _ in range(500)]
    high = [B.gold_score(PIZZA, " ".join(B.demonstration("pizza", 1.0, rng)[0])) for _ in range(500)]
    assert sum(high) / 500 > sum(low) / 500 + 0.5


def test_prompts_are_deterministic_and_balanced():
    train, again = B.make_prompts("train"), B.make_prompts("train")
    assert train == again and len(train) == B.TRAIN_PROMPTS
    evals = B.make_prompts("eval")
    assert len(evals) == B.EVAL_PROMPTS
    assert not {p.id for p in train} & {p.id for p in evals}
    assert [p.text for p in train] != [p.text for p in evals]  # independent draws
    counts = {s: sum(B.subject_of(p.text) == s for p in evals) for s in B.SUBJECTS}
    assert set(counts.values()) == {B.EVAL_PROMPTS // len(B.SUBJECTS)}
    assert all(len(p.text.split()) == B.PROMPT_LENGTH for p in train)
    assert B.make_prompts("train", seed=1) != train
    with pytest.raises(ValueError):
        B.make_prompts("validation")


# ---------------------------------------------------------------------------------------------------
# Built assets
# ---------------------------------------------------------------------------------------------------


def test_meta_and_layout(builtin_assets: Path):
    for rel in [
        "tokenizer/tokenizer.json",
        "sft/config.json",
        "sft/model.safetensors",
        "sft/tokenizer.json",
        "reward/config.json",
        "reward/model.safetensors",
        "reward/tokenizer.json",
        "prompts/train.jsonl",
        "prompts/eval.jsonl",
        "meta.json",
    ]:
        assert (builtin_assets / rel).is_file(), rel
    meta = json.loads((builtin_assets / "meta.json").read_text())
    assert meta["version"] == B.VERSION and meta["seed"] == 0
    assert meta["train_prompts"] == B.TRAIN_PROMPTS and meta["eval_prompts"] == B.EVAL_PROMPTS
    assert 40 <= meta["vocab_size"] <= 70
    assert -0.25 <= meta["sft"]["mean_gold"] <= 0.1
    assert meta["reward"]["pair_accuracy"] > 0.85
    assert meta["reward"]["sft_samples_spearman"] > 0.8
    assert meta["build_seconds"] > 0
    assert meta["recommended_rollout"]["response_length"] == B.RESPONSE_LENGTH


def test_tokenizer_roundtrip(builtin_assets: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_assets / "tokenizer")
    assert len(tok) == len(B.vocabulary())
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == B.SPECIAL_TOKENS
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = "review the pizza : the pizza was hot and crispy ."
    ids = tok(text)["input_ids"]
    assert len(ids) == 11 and tok.unk_token_id not in ids  # no BOS/EOS added
    assert tok.decode(ids) == text
    assert tok.decode([*ids, tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == text
    assert (
        tok("Review the PIZZA:")["input_ids"] == tok(B.PROMPT_TEMPLATE.format(subject="pizza"))["input_ids"]
    )
    assert tok("the zebra")["input_ids"][1] == tok.unk_token_id
    # Same tokenizer in the model directories, and it survives another save/load.
    for sub in ("sft", "reward"):
        other = AutoTokenizer.from_pretrained(builtin_assets / sub)
        assert other.get_vocab() == tok.get_vocab() and other.pad_token_id == tok.pad_token_id
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(text)["input_ids"] == ids and again.decode(ids) == text
    batch = again(["review the tea :", "review the pizza : the pizza ."], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == again.pad_token_id  # right padding by default


def test_sft_policy_roundtrip(builtin_assets: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    model = AutoModelForCausalLM.from_pretrained(builtin_assets / "sft")
    assert isinstance(model, GPT2LMHeadModel)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_positions) == (2, 64, 4, 64)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert (cfg.pad_token_id, cfg.eos_token_id) == (0, 2)
    ids = torch.tensor([[4, 5, 6, 7, 5, 6, 8], [4, 5, 9, 7, 5, 9, 8]])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "sft")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").eval()
    with torch.no_grad():
        after = again(input_ids=ids).logits
    assert torch.equal(before, after)


def test_reward_model_roundtrip_and_scoring(builtin_assets: Path, tmp_path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(builtin_assets / "reward")
    rm = AutoModelForSequenceClassification.from_pretrained(builtin_assets / "reward").eval()
    assert isinstance(rm, GPT2ForSequenceClassification)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    texts = [f"{PIZZA} the pizza was hot and crispy . <eos>", f"{PIZZA} the pizza . <eos>", f"{PIZZA} the"]
    right = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = sequence_scores(rm, right["input_ids"], right["attention_mask"])
        theirs = rm(**right).logits[:, 0]  # HF pools the last non-pad token: same thing, right-padded
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, theirs)

    tok.padding_side = "left"
    left = tok(texts, padding=True, return_tensors="pt")
    assert left["attention_mask"][2, 0].item() == 0
    with torch.no_grad():
        left_scores = sequence_scores(rm, left["input_ids"], left["attention_mask"])
    torch.testing.assert_close(left_scores, ours, atol=1e-5, rtol=1e-5)
    assert ours[0] > ours[1]  # the reward model agrees with the gold reward here

    rm.save_pretrained(tmp_path / "rm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        assert torch.equal(sequence_scores(again, right["input_ids"], right["attention_mask"]), ours)


def _load_models(assets: Path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets / "tokenizer")
    sft = AutoModelForCausalLM.from_pretrained(assets / "sft").eval()
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "reward").eval()
    return tok, sft, rm


def test_sft_mean_gold_in_band(builtin_assets: Path):
    tok, sft, _ = _load_models(builtin_assets)
    prompts = [p.text for p in B.make_prompts("eval")] * 3
    ids = torch.tensor([tok(p)["input_ids"] for p in prompts])
    gen = torch.Generator().manual_seed(1234)
    responses = B.sample_responses(
        sft, ids, B.RESPONSE_LENGTH, tok.eos_token_id, tok.pad_token_id, generator=gen
    )
    texts = tok.batch_decode(responses, skip_special_tokens=True)
    gold = B.gold_reward(prompts, texts)
    mean = sum(gold) / len(gold)
    assert -0.3 <= mean <= 0.15, mean
    # The good behaviours have non-trivial probability under SFT (RL can only reinforce what it samples).
    assert sum(g >= 0.75 for g in gold) / len(gold) > 0.02
    assert sum(g == 1.0 for g in gold) > 0
    assert all(len(r) <= B.RESPONSE_LENGTH for r in responses)
    # Greedy decoding is deterministic.
    greedy = B.sample_responses(
        sft, ids[:8], B.RESPONSE_LENGTH, tok.eos_token_id, tok.pad_token_id, temperature=0
    )
    assert greedy == B.sample_responses(
        sft, ids[:8], B.RESPONSE_LENGTH, tok.eos_token_id, tok.pad_token_id, temperature=0
    )


def test_reward_model_accuracy_on_fresh_pairs(builtin_assets: Path):
    tok, sft, rm = _load_models(builtin_assets)
    vocab = B._Vocab(tok)
    pairs = B._make_pairs(vocab, sft, 600, random.Random(987), torch.Generator().manual_seed(987))
    chosen = B._rm_scores(rm, pairs.chosen, vocab.pad)
    rejected = B._rm_scores(rm, pairs.rejected, vocab.pad)
    accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(chosen)
    assert accuracy > 0.8, accuracy


def test_builtin_task(builtin_assets: Path, builtin_data_dir: Path):
    task = load_task(TaskConfig(name="builtin"))
    assert isinstance(task, B.BuiltinTask) and isinstance(task, Task)
    assert task.name == "builtin" and task.has_gold_reward
    assert task.default_models == {"policy": "builtin:sft", "reward": "builtin:reward"}
    train, evals = task.prompts("train"), task.prompts("eval")
    assert train == B.make_prompts("train") and evals == B.make_prompts("eval")
    assert all(isinstance(p, Prompt) for p in train)
    assert task.prompts("train") == train  # stable across calls
    assert task.gold_reward([PIZZA], ["the pizza was hot and crispy ."]) == [1.0]
    assert "gold reward" in task.describe()
    with pytest.raises(ValueError):
        task.prompts("test")

    sft = resolve_model_path("builtin:sft")
    assert Path(sft) == (builtin_assets / "sft").resolve() and Path(sft).is_absolute()
    assert Path(resolve_model_path("builtin:reward")) == (builtin_assets / "reward").resolve()
    assert Path(resolve_model_path("builtin:tokenizer")) == (builtin_assets / "tokenizer").resolve()
    assert resolve_model_path("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="builtin:sft"):
        resolve_model_path("builtin:policy")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("builtin:sft"))
    assert filter_prompts_by_length(train[:5] + [Prompt("x", "a b c d e f")], tok, 4) == train[:5]
    assert B.ensure_assets(builtin_assets) == builtin_assets.resolve()  # current: nothing to do


def test_missing_assets_say_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KLQ_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="klq build-assets"):
        resolve_model_path("builtin:reward")
    with pytest.raises(FileNotFoundError, match="klq build-assets"):
        load_task(TaskConfig(name="builtin")).prompts("train")
    # The gold reward needs no assets.
    assert load_task(TaskConfig(name="builtin")).gold_reward([PIZZA], ["the pizza was hot ."]) == [0.75]


def _shrink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smaller settings, set on the modules that read them."""
    for module, name, value in [
        (training, "SFT_DEMOS", 256),
        (training, "SFT_STEPS", 6),
        (training, "RM_PAIRS", 96),
        (training, "RM_EVAL_PAIRS", 48),
        (training, "RM_STEPS", 6),
        (training, "CALIBRATION_SAMPLES", 64),
        (gold, "TRAIN_PROMPTS", 32),
        (gold, "EVAL_PROMPTS", 16),
        # the judge's training was 25 of a build's 31 s, and this test builds four times
        (judge_model, "JUDGE_PAIRS", 256),
        (judge_model, "JUDGE_EVAL_PAIRS", 64),
        (judge_model, "JUDGE_STEPS", 12),
    ]:
        monkeypatch.setattr(module, name, value)


def test_build_is_deterministic_locked_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _shrink(monkeypatch)
    builds = []
    real_build = assets._build_into
    monkeypatch.setattr(assets, "_build_into", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    out = tmp_path / "a" / "builtin"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(B.build_assets(out, log=lambda _m: None)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out.resolve()] * 2 and len(builds) == 1  # the second waited, then found it built
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".builtin-")]  # no temp dirs left

    other = B.build_assets(tmp_path / "b" / "builtin", log=lambda _m: None)
    for rel in [
        "sft/model.safetensors",
        "reward/model.safetensors",
        "prompts/train.jsonl",
        "tokenizer/tokenizer.json",
    ]:
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), rel

    meta = B.read_meta(out)
    B.build_assets(out, force=True, log=lambda _m: None)
    assert len(builds) == 3 and B.read_meta(out)["created_at"] >= meta["created_at"]
    (out / "meta.json").write_text(json.dumps({**meta, "version": -1}))
    B.ensure_assets(out, log=lambda _m: None)  # stale version: rebuilt
    assert len(builds) == 4 and B.read_meta(out)["version"] == B.VERSION


# ---------------------------------------------------------------------------------------------------
# Real-data tasks on small local files
# ---------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tldr_rows(n: int) -> list[dict]:
    return [
        {"id": f"t3_{i}", "subreddit": "relationships", "title": f"Title {i}", "post": f"  Post body {i}.\n"}
        for i in range(n)
    ]


def test_tldr_jsonl_formats_and_splits(tmp_path: Path):
    path = _write_jsonl(tmp_path / "tldr.jsonl", _tldr_rows(40))
    task = load_task(TaskConfig(name="tldr", dataset=str(path)))
    assert task.gold_reward(["x"], ["y"]) is None and not task.has_gold_reward
    train, evals = task.prompts("train"), task.prompts("eval")
    assert len(train) == 38 and len(evals) == 2  # last 5 % held out
    assert train[0] == Prompt(
        "t3_0", "SUBREDDIT: r/relationships\n\nTITLE: Title 0\n\nPOST: Post body 0.\n\nTL;DR:"
    )
    assert [p.id for p in evals] == ["t3_38", "t3_39"]
    assert task.prompts("train") == train


def test_tldr_parquet_prompt_field_and_ids(tmp_path: Path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [
        {"prompt": f"SUBREDDIT: r/x\n\nTITLE: t{i}\n\nPOST: p\n\nTL;DR:", "completion": " c"}
        for i in range(3)
    ]
    path = tmp_path / "tldr.parquet"
    pd.DataFrame(rows).to_parquet(path)
    task = load_task(TaskConfig(name="tldr", dataset=str(path)))
    train = task.prompts("train")
    assert [p.id for p in train] == ["train-000000", "train-000001"]
    assert train[1].text == rows[1]["prompt"]
    assert task.prompts("eval") == [Prompt("eval-000002", rows[2]["prompt"])]


def test_tldr_directory_with_split_files(tmp_path: Path):
    _write_jsonl(tmp_path / "data" / "train.jsonl", _tldr_rows(3))
    _write_jsonl(tmp_path / "data" / "validation.jsonl", [{"prompt": "held out TL;DR:"}])
    task = load_task(TaskConfig(name="tldr", dataset=str(tmp_path / "data")))
    assert len(task.prompts("train")) == 3
    assert task.prompts("eval") == [Prompt("eval-000000", "held out TL;DR:")]
    # Without an eval file, the last 5 % of the train file.
    _write_jsonl(tmp_path / "only" / "train.jsonl", _tldr_rows(3))
    only = load_task(TaskConfig(name="tldr", dataset=str(tmp_path / "only")))
    assert [p.id for p in only.prompts("train")] == ["t3_0", "t3_1"]
    assert [p.id for p in only.prompts("eval")] == ["t3_2"]
    with pytest.raises(FileNotFoundError, match="train"):
        (tmp_path / "empty").mkdir()
        load_task(TaskConfig(name="tldr", dataset=str(tmp_path / "empty"))).prompts("train")


def test_tldr_bad_schema_is_a_clear_error(tmp_path: Path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "no prompt here"}, {"text": "x"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl.*subreddit"):
        load_task(TaskConfig(name="tldr", dataset=str(path))).prompts("train")


def test_hh_single_turn_only(tmp_path: Path):
    rows = [
        {"chosen": "\n\nHuman: What is a good pizza topping?\n\nAssistant: Basil.", "rejected": "..."},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine."},
        {"chosen": "Human: Name a fruit.\n\nAssistant: A pear."},
        {"id": "msg-1", "prompt": [{"role": "user", "content": "Tell me a joke."}]},
        {
            "prompt": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ]
        },
        {"chosen": "\n\nHuman: Is tea hot?\n\nAssistant: Usually."},
    ]
    path = _write_jsonl(tmp_path / "hh.jsonl", rows)
    task = load_task(TaskConfig(name="hh", dataset=str(path)))
    train = task.prompts("train")
    assert train == [
        Prompt("train-000000", "\n\nHuman: What is a good pizza topping?\n\nAssistant:"),
        Prompt("train-000002", "\n\nHuman: Name a fruit.\n\nAssistant:"),
        Prompt("msg-1", "\n\nHuman: Tell me a joke.\n\nAssistant:"),
    ]  # multi-turn rows skipped; the last row is the held-out eval slice
    assert task.prompts("eval") == [Prompt("eval-000005", "\n\nHuman: Is tea hot?\n\nAssistant:")]
    assert hh_question("\n\nHuman: x\n\nAssistant: y\n\nHuman: z") is None
    assert hh_question(None) is None


def test_prompts_task(tmp_path: Path):
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": 7, "prompt": "Hello"},
            {"prompt": "World"},
            {"id": 7, "prompt": "Hello"},
            {"id": 7, "prompt": "Bye"},
        ],
    )
    task = load_task(TaskConfig(name="prompts", dataset=str(path)))
    assert isinstance(task, DatasetTask)
    # ids from the row (exact duplicates dropped, a reused id made unique); the last row is eval
    assert task.prompts("train") == [Prompt("7", "Hello"), Prompt("train-000001", "World")]
    assert task.prompts("eval") == [Prompt("7", "Bye")]
    single = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Only"}])
    one = load_task(TaskConfig(name="prompts", dataset=str(single)))
    assert one.prompts("train") == [Prompt("train-000000", "Only")]
    assert one.prompts("eval") == [Prompt("eval-000000", "Only")]  # a single row serves both splits
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(DatasetError, match="'prompt'"):
        load_task(TaskConfig(name="prompts", dataset=str(bad))).prompts("train")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match="broken.jsonl"):
        load_task(TaskConfig(name="prompts", dataset=str(tmp_path / "broken.jsonl"))).prompts("train")


def test_missing_datasets_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task(TaskConfig(name="prompts", dataset=str(tmp_path / "nope.jsonl"))).prompts("train")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        load_task(TaskConfig(name="tldr", dataset="data/missing.parquet")).prompts("eval")
    # A hub id: a clear error naming the dataset, whether `datasets` is missing or the hub unreachable.
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the extra were not installed
    task = load_task(TaskConfig(name="hh"))
    assert task.dataset == "Anthropic/hh-rlhf"
    with pytest.raises(ImportError, match=r"Anthropic/hh-rlhf.*klq-lab\[datasets\]"):
        task.prompts("train")


def test_hub_loading_uses_splits_and_falls_back_to_test(monkeypatch: pytest.MonkeyPatch):
    import sys
    import types

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if split == "validation":
            raise ValueError("Unknown split \"validation\". Should be one of ['train', 'test'].")
        if name == "no/such-dataset":
            raise FileNotFoundError("Dataset 'no/such-dataset' doesn't exist on the Hub")
        return [{"chosen": f"\n\nHuman: q-{split}\n\nAssistant: a"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = load_task(TaskConfig(name="hh", dataset="Anthropic/hh-rlhf"))
    assert task.prompts("train") == [Prompt("train-000000", "\n\nHuman: q-train\n\nAssistant:")]
    assert task.prompts("eval") == [Prompt("eval-000000", "\n\nHuman: q-test\n\nAssistant:")]
    assert calls == [
        ("Anthropic/hh-rlhf", "train"),
        ("Anthropic/hh-rlhf", "validation"),
        ("Anthropic/hh-rlhf", "test"),
    ]
    with pytest.raises(DatasetError, match="no/such-dataset"):
        load_task(TaskConfig(name="prompts", dataset="no/such-dataset")).prompts("train")
    tldr = load_task(TaskConfig(name="tldr"))
    assert tldr.dataset == "trl-lib/tldr" and "policy" in tldr.default_models


def test_load_task_names():
    assert isinstance(load_task(TaskConfig()), B.BuiltinTask)
    for name in ("tldr", "hh"):
        assert load_task(TaskConfig(name=name)).name == name
    with pytest.raises(ValueError):
        TaskConfig(name="prompts")  # the config itself insists on a dataset
