"""The built-in task's words and its word-level tokenizers (pure Python; `tokenizers` and `transformers`
are imported only to build a tokenizer)."""

from __future__ import annotations

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)

SUBJECTS = ("pizza", "coffee", "soup", "cake", "burger", "salad", "tea", "pasta")
# Positive adjectives that fit each subject (a "crispy tea" is odd, a "hot tea" is good).
FITTING: dict[str, tuple[str, ...]] = {
    "pizza": ("hot", "crispy", "cheesy"),
    "coffee": ("hot", "strong", "smooth"),
    "soup": ("hot", "rich", "creamy"),
    "cake": ("sweet", "moist", "rich"),
    "burger": ("juicy", "hot", "cheesy"),
    "salad": ("fresh", "crunchy", "crispy"),
    "tea": ("hot", "sweet", "smooth"),
    "pasta": ("creamy", "cheesy", "fresh"),
}
SPECIFIC_ADJECTIVES = tuple(dict.fromkeys(a for adjs in FITTING.values() for a in adjs))
GENERIC_POSITIVE = ("good", "great", "tasty", "delicious")
NEGATIVE = ("cold", "bland", "stale", "soggy", "burnt", "greasy", "bitter", "salty", "awful")
OFF_TOPIC = ("car", "movie", "weather", "phone")
FUNCTION_WORDS = ("review", "the", ":", "was", "is", "and", "but", "very", "it", ".")
ADJECTIVES = SPECIFIC_ADJECTIVES + GENERIC_POSITIVE + NEGATIVE
VERBS = ("was", "is")
CONNECTORS = ("and", "but")


def vocabulary() -> list[str]:
    """All tokens, specials first (ids 0..3 = pad, bos, eos, unk), in a fixed order."""
    words = list(SPECIAL_TOKENS)
    for group in (FUNCTION_WORDS, SUBJECTS, SPECIFIC_ADJECTIVES, GENERIC_POSITIVE, NEGATIVE, OFF_TOPIC):
        for w in group:
            if w not in words:
                words.append(w)
    return words


def _word_level_tokenizer(words: list[str], *, lowercase: bool, padding_side: str, max_length: int):
    """A word-level `transformers.PreTrainedTokenizerFast` over ``words`` (ids in list order): splits on
    whitespace and punctuation; unknown words -> <unk>; no BOS/EOS added on encode; decode joins words
    with single spaces."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def build_tokenizer():
    """The task's word-level tokenizer over `vocabulary()`; lower-cases its input."""
    return _word_level_tokenizer(vocabulary(), lowercase=True, padding_side="right", max_length=64)


class _Vocab:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids = tokenizer.get_vocab()
        self.words = {i: w for w, i in self.ids.items()}
        self.pad = tokenizer.pad_token_id
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id

    def encode(self, ws: list[str]) -> list[int]:
        return [self.ids[w] for w in ws]

    def text(self, ids: list[int]) -> str:
        """Decoded response text (EOS and pads dropped), as a trainer would decode it."""
        return " ".join(self.words[i] for i in ids if i not in (self.pad, self.eos, self.bos))
