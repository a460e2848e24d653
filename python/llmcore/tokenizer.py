"""The tokenizer of a loaded model, with the HF-style methods users call (encode, decode,
apply_chat_template, the special tokens)."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import chat_template as _chat

# The named special tokens transformers passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# transformers' apply_chat_template options about tensors and padding, which a prompt for this
# engine never needs; refused when set rather than handed to the template as variables.
_TOKENIZATION_ONLY_DEFAULTS = {
    "padding": False,
    "truncation": False,
    "max_length": None,
    "return_tensors": None,
    "return_assistant_tokens_mask": False,
    "sanitize_control_tokens": False,
    "tokenizer_kwargs": None,
}

MessageList = List[Dict[str, Any]]


class Tokenizer:
    """Encodes and decodes with the engine's native tokenizer (HF tokenizer.json BPE in C++, or
    sentencepiece for tokenizer.model checkpoints), plus HF-style chat templates. `path` is the
    checkpoint (or tokenizer) directory, where the chat template and tokenizer_config.json are
    read from."""

    def __init__(self, native, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        self._native = native  # _C.Tokenizer
        self._path = os.fspath(path) if path is not None else None
        self._special_tokens = self._read_special_tokens()
        self._chat_template: _chat.ChatTemplates = _chat.load_chat_templates(self._path)

    @classmethod
    def from_pretrained(cls, path: Union[str, "os.PathLike[str]"]) -> "Tokenizer":
        """Loads the tokenizer of a checkpoint directory without loading the model."""
        from . import _C

        path = os.fspath(path)
        return cls(_C.load_tokenizer(path), path)

    # -- text <-> ids -----------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of `text`; BOS/EOS added as tokenizer_config.json says when add_special_tokens.
        Special tokens written in the text ("<s>", "<|eot_id|>") encode to their ids."""
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = True) -> str:
        """Text of the ids; incomplete UTF-8 comes out as U+FFFD."""
        if isinstance(ids, int):
            ids = [ids]
        return self._native.decode(list(ids), skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]) -> Union[str, List[str]]:
        """Vocabulary pieces of the ids ("▁Hello", "<0x0A>")."""
        if isinstance(ids, int):
            return self._native.id_to_token(ids)
        return [self._native.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[Optional[int], List[Optional[int]]]:
        """Ids of vocabulary pieces (None for a piece not in the vocabulary)."""
        def one(t: str) -> Optional[int]:
            i = self._native.token_to_id(t)
            return None if i < 0 else i
        return one(tokens) if isinstance(tokens, str) else [one(t) for t in tokens]

    def __call__(self, text: str, add_special_tokens: bool = True) -> Dict[str, List[int]]:
        """{"input_ids": encode(text, add_special_tokens)}."""
        return {"input_ids": self.encode(text, add_special_tokens)}

    # -- special tokens ---------------------------------------------------------------------
    @property
    def bos_token_id(self) -> Optional[int]:
        """Id of the beginning-of-sequence token (None if the tokenizer has none)."""
        i = self._native.bos_token_id
        return None if i < 0 else i

    @property
    def eos_token_id(self) -> Optional[int]:
        """Id of the end-of-sequence token (None if the tokenizer has none)."""
        i = self._native.eos_token_id
        return None if i < 0 else i

    @property
    def bos_token(self) -> Optional[str]:
        """The beginning-of-sequence token's text ("<s>")."""
        return self._special_tokens.get("bos_token")

    @property
    def eos_token(self) -> Optional[str]:
        """The end-of-sequence token's text ("</s>")."""
        return self._special_tokens.get("eos_token")

    @property
    def unk_token(self) -> Optional[str]:
        return self._special_tokens.get("unk_token")

    @property
    def pad_token(self) -> Optional[str]:
        return self._special_tokens.get("pad_token")

    @property
    def special_tokens_map(self) -> Dict[str, str]:
        """The named special tokens that are set ({"bos_token": "<s>", ...}); chat templates
        see each under its name."""
        return dict(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the vocabulary and the added tokens)."""
        return self._native.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    # -- chat -------------------------------------------------------------------------------
    @property
    def chat_template(self) -> Union[None, str, Dict[str, str]]:
        """The model's chat template: None, a Jinja template string, or templates by name."""
        return self._chat_template

    @chat_template.setter
    def chat_template(self, value: Union[None, str, Dict[str, str], List[Dict[str, str]]]) -> None:
        if isinstance(value, list):
            value = _chat.parse_config_templates(value, "chat_template")
        if value is not None and not isinstance(value, (str, dict)):
            raise ValueError(f"chat_template must be None, a string or a dict of named templates; "
                             f"got {type(value).__name__}")
        self._chat_template = value

    def get_chat_template(self, chat_template: Optional[str] = None,
                          tools: Optional[Sequence[Any]] = None) -> str:
        """The template source apply_chat_template would render (see select_chat_template)."""
        where = f"the model at {self._path}" if self._path else "this tokenizer"
        return _chat.select_chat_template(self._chat_template, chat_template, tools, where)

    def apply_chat_template(
        self,
        conversation: Union[MessageList, Sequence[MessageList]],
        *,
        tools: Optional[Sequence[Union[Dict[str, Any], Callable]]] = None,
        documents: Optional[Sequence[Dict[str, Any]]] = None,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = False,
        continue_final_message: Union[bool, str] = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Union[str, List[str], List[int], List[List[int]], Dict[str, Any]]:
        """Renders a conversation (a list of {"role", "content"} dicts; content a string or a
        list of {"type": "text", "text": ...} parts) or a list of conversations with the chat
        template, as transformers does.

        chat_template: a template string, or the name of one of the model's named templates.
        add_generation_prompt: end with the header that opens an assistant turn.
        continue_final_message: leave the final message open so generation continues it
            (True, or the name of the message field to continue); not with add_generation_prompt.
        tokenize: return token ids (encoded without adding BOS/EOS: the template writes them)
            instead of the text; return_dict wraps them as {"input_ids", "attention_mask"}.
        Other keyword arguments are template variables (e.g. enable_thinking, date_string).

        Raises ValueError when the model has no template and none is passed, and
        ChatTemplateError (a ValueError) when the template calls raise_exception.
        """
        for name, default in _TOKENIZATION_ONLY_DEFAULTS.items():
            if name in kwargs:
                if kwargs.pop(name) != default:
                    raise ValueError(f"apply_chat_template's {name} is not supported by llmcore's tokenizer")
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and not conversation:
            raise ValueError("cannot apply a chat template to an empty conversation; give at least one message")
        batched = isinstance(conversation, (list, tuple)) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages"))
        conversations = list(conversation) if batched else [conversation]
        # Caller's variables win over the special-token strings of the same name.
        variables = {**self._special_tokens, **kwargs}
        texts = _chat.render_chat(conversations, template, tools=tools, documents=documents,
                                  add_generation_prompt=add_generation_prompt,
                                  continue_final_message=continue_final_message, template_vars=variables)
        if not tokenize:
            return texts if batched else texts[0]
        ids = [self.encode(t, add_special_tokens=False) for t in texts]
        out: Any = ids if batched else ids[0]
        if return_dict:
            mask = [[1] * len(x) for x in ids]
            return {"input_ids": out, "attention_mask": mask if batched else mask[0]}
        return out

    # -- loading ----------------------------------------------------------------------------
    def _read_special_tokens(self) -> Dict[str, str]:
        """Named special token strings from tokenizer_config.json, else special_tokens_map.json;
        BOS/EOS named in neither come from the native tokenizer's ids."""
        config = _chat.read_tokenizer_config(self._path)
        legacy_map = _chat.read_special_tokens_map(self._path)
        tokens: Dict[str, str] = {}
        for name in SPECIAL_TOKEN_NAMES:
            if name in config:
                value = config[name]
            elif name in legacy_map:
                value = legacy_map[name]
            else:
                value = self._native_special(name)
            text = _token_text(value, name)
            if text is not None:
                tokens[name] = text
        return tokens

    def _native_special(self, name: str) -> Optional[str]:
        ids = {"bos_token": self._native.bos_token_id, "eos_token": self._native.eos_token_id}
        i = ids.get(name, -1)
        return self._native.id_to_token(i) if i >= 0 else None


def _token_text(value: Any, name: str) -> Optional[str]:
    """A special token as tokenizer_config.json writes it ("<s>", or an AddedToken dict) -> text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"tokenizer_config.json {name} must be a string or an AddedToken dict with "
                     f"'content'; got {value!r}")
