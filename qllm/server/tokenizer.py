"""Text to token ids and back, for text prompts, chat messages and streamed text.

The random-weight models use Mixtral's vocabulary, so Mixtral's own tokenizer (`mistral_v1`)
serves them; a model loaded with `from_pretrained` uses the tokenizer saved beside it
(`pretrained`). Without a tokenizer (`~tokenizer`) the server takes token-id prompts only.
"""

from __future__ import annotations

import codecs
import re
from typing import Protocol

DETOKENIZE_CONTEXT = 5  # tokens decoded before each new one, so word boundaries come out right
BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


class Detokenizer(Protocol):
    def add(self, token_id: int) -> str:
        """The text one more generated token adds ("" while a character is incomplete)."""


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]:
        """A prompt's token ids (with the beginning-of-sequence token where the model expects one)."""

    def decode(self, token_ids: list[int]) -> str:
        ...

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """The messages in the model's chat template, ready for the assistant's reply; ValueError
        when the tokenizer has no template or the messages break it."""

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        """Streams the text of the tokens generated after `prompt_ids`."""


class MistralV1Tokenizer:
    """Mixtral-8x7B's tokenizer: mistral_common's v1 SentencePiece model and its [INST] template."""

    def __init__(self) -> None:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # slow to import: only when used

        self._mistral = MistralTokenizer.v1()
        self._raw = self._mistral.instruct_tokenizer.tokenizer
        self.token_bytes = [self._piece_bytes(token_id) for token_id in range(self._raw.n_words)]

    def _piece_bytes(self, token_id: int) -> bytes:
        """What a token adds to the text mid-sequence, as SentencePiece decodes it."""
        if self._raw.is_special(token_id):
            return b""
        if token_id == self._raw.unk_id:
            return " \u2047 ".encode()
        piece = self._raw.id_to_piece(token_id)
        byte = BYTE_PIECE.fullmatch(piece)
        return bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode()

    def encode(self, text: str) -> list[int]:
        return self._raw.encode(text, bos=True, eos=False)

    def decode(self, token_ids: list[int]) -> str:
        return self._raw.decode(token_ids)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        from mistral_common.exceptions import MistralCommonException
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        try:
            return self._mistral.encode_chat_completion(ChatCompletionRequest(messages=messages)).tokens
        except MistralCommonException as error:
            raise ValueError(f"messages do not fit Mixtral's chat template: {error}") from error

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return PieceDetokenizer(self.token_bytes)


class PretrainedTokenizer:
    """The Hugging Face tokenizer saved with a model (`path`: a hub id or a folder), and its chat template."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.path = path
        self._tokenizer = AutoTokenizer.from_pretrained(path)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(token_ids)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        if self._tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer at {self.path} has no chat template: use /v1/completions")
        encoded = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)  # fmt: skip
        return list(encoded["input_ids"])

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return IncrementalDetokenizer(self, prompt_ids)


class PieceDetokenizer:
    """A SentencePiece tokenizer's text, token by token, from a table of each token's bytes and
    an incremental UTF-8 decoder (which holds back a character's first bytes): a list lookup per token."""

    def __init__(self, token_bytes: list[bytes]) -> None:
        self.token_bytes = token_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self.utf8.decode(self.token_bytes[token_id] if token_id < len(self.token_bytes) else b"")


class IncrementalDetokenizer:
    """Any tokenizer's text, token by token (vLLM's incremental detokenization): decode a short
    window with and without the new tokens and emit the difference, holding back text that ends
    inside a multi-byte character. Two short decodes per token."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.token_ids = list(prompt_ids[-DETOKENIZE_CONTEXT:])
        self.prefix_offset = 0  # start of the window decoded for context
        self.read_offset = len(self.token_ids)  # tokens before this one have been emitted as text

    def add(self, token_id: int) -> str:
        self.token_ids.append(token_id)
        prefix = self.tokenizer.decode(self.token_ids[self.prefix_offset : self.read_offset])
        text = self.tokenizer.decode(self.token_ids[self.prefix_offset :])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):  # nothing new yet, or half a character
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        return text[len(prefix) :]
