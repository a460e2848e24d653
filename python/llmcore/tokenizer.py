"""The tokenizer of a loaded model, with the HF-style methods users call."""

from __future__ import annotations

from typing import List, Optional, Union


class Tokenizer:
    """Encodes and decodes with the engine's native tokenizer (sentencepiece for
    tokenizer.model checkpoints)."""

    def __init__(self, native) -> None:
        self._native = native  # _C.Tokenizer

    @classmethod
    def from_pretrained(cls, path: str) -> "Tokenizer":
        """Loads the tokenizer of a checkpoint directory without loading the model."""
        from . import _C

        return cls(_C.load_tokenizer(str(path)))

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of `text`; BOS/EOS added as tokenizer_config.json says when add_special_tokens."""
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids: Union[int, List[int]], skip_special_tokens: bool = True) -> str:
        """Text of the ids; incomplete UTF-8 comes out as U+FFFD."""
        if isinstance(ids, int):
            ids = [ids]
        return self._native.decode(list(ids), skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Union[int, List[int]]) -> Union[str, List[str]]:
        """Vocabulary pieces of the ids ("▁Hello", "<0x0A>")."""
        if isinstance(ids, int):
            return self._native.id_to_token(ids)
        return [self._native.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: Union[str, List[str]]) -> Union[Optional[int], List[Optional[int]]]:
        """Ids of vocabulary pieces (None for a piece not in the vocabulary)."""
        def one(t: str) -> Optional[int]:
            i = self._native.token_to_id(t)
            return None if i < 0 else i
        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    @property
    def bos_token_id(self) -> Optional[int]:
        i = self._native.bos_token_id
        return None if i < 0 else i

    @property
    def eos_token_id(self) -> Optional[int]:
        i = self._native.eos_token_id
        return None if i < 0 else i

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}
