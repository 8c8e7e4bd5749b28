"""Models, tokenizer and prompts shared by both sides of bench/train_throughput.py, built locally.

No hub is reachable, so every model is randomly initialised (seeded) and saved in HF layout; both this
project and the TRL runner load the same directories with `from_pretrained`:

    <root>/tokenizer   word-level tokenizer (tokenizers' WordLevel + whitespace split) with GPT-2's vocab
                       size (50,257 for gpt2-tiny) or Pythia's (50,304); EOS and PAD are distinct tokens
    <root>/policy      causal LM (policy, and the reference: the same weights)
    <root>/reward      sequence-classification model with a 1-output `score` head (the reward model; both
                       sides initialise their value network from it, TRL's and this project's default)
    <root>/prompts.jsonl  prompts of exactly `prompt_len` tokens (no padding on either side)

Shapes:
    gpt2-tiny   GPT-2 with 4 layers, 128 dims, 2 heads (head dim 64 as in GPT-2), 1024 positions
    pythia-1b   GPTNeoX with 16 layers, 2048 dims, 8 heads, 2048 positions, vocab 50,304 (Pythia-1B)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SHAPES = {
    "gpt2-tiny": {"arch": "gpt2", "vocab": 50257, "layers": 4, "dim": 128, "heads": 2, "positions": 1024,
                  "prompt_len": 16, "response_len": 48},
    "pythia-1b": {"arch": "gpt_neox", "vocab": 50304, "layers": 16, "dim": 2048, "heads": 8, "positions": 2048,
                  "prompt_len": 384, "response_len": 53},
}
EOS, PAD, UNK = "<|endoftext|>", "<pad>", "<unk>"
VERSION = 3  # bump when the built assets change


def _config(shape: dict, vocab: int, eos_id: int, pad_id: int):
    if shape["arch"] == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=vocab, n_positions=shape["positions"], n_embd=shape["dim"],
                          n_layer=shape["layers"], n_head=shape["heads"], bos_token_id=eos_id,
                          eos_token_id=eos_id, pad_token_id=pad_id, resid_pdrop=0.0, embd_pdrop=0.0,
                          attn_pdrop=0.0, summary_first_dropout=0.0)
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=shape["dim"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], intermediate_size=4 * shape["dim"],
                         max_position_embeddings=shape["positions"], rotary_pct=0.25, use_parallel_residual=True,
                         tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def _save_tokenizer(tokenizer, path: Path) -> None:
    """save_pretrained, with a tokenizer class that transformers 4.x (the TRL venv) knows as well."""
    tokenizer.save_pretrained(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2))


def build(root: Path, shape_name: str, num_prompts: int = 512, seed: int = 0) -> Path:
    """Build (once) the assets of `shape_name` under root/shape_name; returns that directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    shape = SHAPES[shape_name]
    out = Path(root) / shape_name
    marker = out / "built.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == VERSION:
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = shape["vocab"]
    words = [EOS, PAD, UNK] + [f"w{i}" for i in range(vocab_size - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, padding_side="left", model_max_length=shape["positions"])
    _save_tokenizer(fast, out / "tokenizer")

    torch.manual_seed(seed)
    config = _config(shape, vocab_size, eos_id=0, pad_id=1)
    policy = AutoModelForCausalLM.from_config(config)
    policy.save_pretrained(out / "policy")
    _save_tokenizer(fast, out / "policy")
    config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(config)
    reward.save_pretrained(out / "reward")
    _save_tokenizer(fast, out / "reward")

    rng = random.Random(seed)
    with (out / "prompts.jsonl").open("w") as f:
        for i in range(num_prompts):
            text = " ".join(f"w{rng.randrange(vocab_size - 3)}" for _ in range(shape["prompt_len"]))
            f.write(json.dumps({"id": f"p{i:05d}", "prompt": text}) + "\n")
    marker.write_text(json.dumps({"version": VERSION, "shape": shape_name, **shape}))
    return out


def prompts(root: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in (Path(root) / "prompts.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "gpt2-tiny"))
