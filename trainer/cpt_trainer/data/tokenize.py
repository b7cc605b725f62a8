"""Tokenize documents into flat token arrays with per-token flags.

Text documents: the fast tokenizer in batches, EOS appended per document, every token trains.
Chat documents: rendered with the model's chat template; only assistant turns train. The
assistant spans are found by rendering each conversation prefix (`messages[:i]` with the
generation prompt, then `messages[:i+1]`) and mapping those character spans to tokens with
the tokenizer's offsets -- this works for any prefix-stable template, without needing the
`{% generation %}` markers most templates lack.

A `TokenizedFile` holds one file's documents as three flat arrays (tokens, per-token loss
mask, document offsets), which is what the packer and Ray Data move around.

Huge documents (a book on one line) are tokenized piece by piece: a fast tokenizer keeps ~100
bytes per token of bookkeeping (token strings, offsets, alignments) and Python a 36-byte int per
id, so one 20 MB line peaked at 2.6 GB. Pieces end just before a single space between two
non-space characters, where byte-level BPE pre-tokenizers (GPT-2, Llama 3, SmolLM, Qwen) always
split, so the ids are the same as the whole document's; each tokenizer is checked once on a
sample of the document, and one that does not split there (e.g. a normalizer that prepends a
marker to every call) gets the document whole, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpt_trainer.data.documents import DataError, Document, Skip

#: flags byte per token
DOC_START = 1
TRAIN = 2

#: Documents longer than this (characters) are tokenized in pieces of about this size.
PIECE_CHARS = 1 << 16
_SPLIT_POINT = re.compile(r"(?<=\S) (?=\S)")

log = logging.getLogger(__name__)


@dataclass
class TokenizedFile:
    """The documents of one file, tokenized."""

    file_index: int
    uri: str
    tokens: np.ndarray  # int64, all documents concatenated
    train_mask: np.ndarray  # uint8 0/1 per token (1 = contributes to the loss)
    offsets: np.ndarray  # int64, len = documents + 1
    lines: np.ndarray  # int64, the line/row number of each document
    skipped: list[Skip] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    def document_hashes(self, seed: int, source: str) -> np.ndarray:
        """A seeded uint64 per document (from its file's position in the listing and its line), used
        to pick holdouts; independent of where the files are stored."""
        out = np.empty(self.documents, dtype=np.uint64)
        for i, line in enumerate(self.lines.tolist()):
            key = f"{seed}\0{source}\0{self.file_index}\0{line}".encode()
            digest = hashlib.blake2b(key, digest_size=8).digest()
            out[i] = int.from_bytes(digest, "little")
        return out


class DocumentTokenizer:
    """Turns `Document`s into token arrays with a fast Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, batch_size: int = 256) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos = int(tokenizer.eos_token_id)
        self._stable: bool | None = None  # split-stable tokenizer (checked on the first huge document)

    def _finish(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[-1] == self.eos else [*ids, self.eos]

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per document, EOS-terminated. Special tokens (e.g. BOS) as the tokenizer adds them."""
        # The Rust backend's encode_batch_fast skips offset tracking: ~25 % faster than
        # tokenizer(batch) for the same ids (special tokens included).
        backend = self.tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [self._finish(e.ids) for e in encode(list(texts), add_special_tokens=True)]

    def _specials(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer adds before and after a text (e.g. BOS), found by encoding one."""
        backend = self.tokenizer.backend_tokenizer
        plain = backend.encode("a", add_special_tokens=False).ids
        full = backend.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        return [], []

    def _pieces(self, text: str, size: int) -> Iterator[str]:
        start = 0
        while len(text) - start > size:
            window = text[start + size // 2 : start + size]
            cut = None
            for match in _SPLIT_POINT.finditer(window):
                cut = match.start()
            if cut is None:
                break  # no split point in the window: the rest goes whole (a 64K-char "word")
            end = start + size // 2 + cut
            yield text[start:end]
            start = end
        yield text[start:]

    def _encode_pieces(self, text: str, size: int) -> np.ndarray:
        backend = self.tokenizer.backend_tokenizer
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        before, after = self._specials()
        chunks = [np.asarray(before, dtype=np.int64)]
        for piece in self._pieces(text, size):
            chunks.append(np.asarray(encode([piece], add_special_tokens=False)[0].ids, dtype=np.int64))
        chunks.append(np.asarray(after, dtype=np.int64))
        return np.concatenate(chunks)

    def _split_stable(self, sample: str) -> bool:
        """Whether tokenizing `sample` in small pieces gives the ids of tokenizing it whole."""
        if self._stable is None:
            whole = np.asarray(self.encode_texts([sample])[0], dtype=np.int64)
            self._stable = bool(np.array_equal(whole, self._finish_array(self._encode_pieces(sample, 256))))
            if not self._stable:
                log.warning(
                    "the tokenizer does not split documents exactly at spaces: documents over %d characters are "
                    "tokenized whole (memory grows with the largest document)",
                    PIECE_CHARS,
                )
        return self._stable

    def _finish_array(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) and ids[-1] == self.eos:
            return ids
        return np.concatenate([ids, np.asarray([self.eos], dtype=np.int64)])

    def encode_long(self, text: str) -> np.ndarray:
        """The ids of one huge document, EOS-terminated, with memory bounded by the piece size."""
        sample = text[: 16 * 1024]
        if len(text) > len(sample):
            sample = sample[: sample.rfind(" ")] if " " in sample else sample
        if not self._split_stable(sample):
            return np.asarray(self.encode_texts([text])[0], dtype=np.int64)
        return self._finish_array(self._encode_pieces(text, PIECE_CHARS))

    def encode_chat(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and a 0/1 train mask that is 1 exactly on assistant turns (and their end marker)."""
        tok = self.tokenizer
        if not tok.chat_template:
            raise DataError("the tokenizer has no chat template; chat-format sources need one")
        full = tok.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            through = tok.apply_chat_template(messages[: i + 1], tokenize=False)
            if not full.startswith(through) or not through.startswith(before):
                raise DataError("the chat template is not prefix-stable; cannot locate assistant turns")
            spans.append((len(before), len(through)))
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        mask = [0] * len(ids)
        for t, (start, end) in enumerate(enc["offset_mapping"]):
            if any(a <= start and end <= b and end > start for a, b in spans):
                mask[t] = 1
        if not any(mask):
            raise DataError("no assistant tokens after rendering the chat template")
        return [*ids, self.eos], [*mask, 0]

    def tokenize_file(self, file_index: int, uri: str, items: Iterable[Document | Skip], chat: bool) -> TokenizedFile:
        """Tokenize one file's documents (texts in batches) into a `TokenizedFile`."""
        token_chunks: list[np.ndarray] = []
        mask_chunks: list[np.ndarray] = []
        lengths: list[int] = []
        lines: list[int] = []
        skipped: list[Skip] = []
        pending: list[Document] = []

        def flush() -> None:
            if not pending:
                return
            for doc, ids in zip(pending, self.encode_texts([d.text or "" for d in pending]), strict=True):
                token_chunks.append(np.asarray(ids, dtype=np.int64))
                mask_chunks.append(np.ones(len(ids), dtype=np.uint8))
                lengths.append(len(ids))
                lines.append(doc.line)
            pending.clear()

        for item in items:
            if isinstance(item, Skip):
                skipped.append(item)
            elif chat:
                assert item.messages is not None
                try:
                    ids, mask = self.encode_chat(item.messages)
                except DataError as exc:
                    raise DataError(f"{uri} line {item.line}: {exc}") from None
                token_chunks.append(np.asarray(ids, dtype=np.int64))
                mask_chunks.append(np.asarray(mask, dtype=np.uint8))
                lengths.append(len(ids))
                lines.append(item.line)
            elif item.text is not None and len(item.text) > PIECE_CHARS:
                flush()  # keep document order
                ids_array = self.encode_long(item.text)
                token_chunks.append(ids_array)
                mask_chunks.append(np.ones(len(ids_array), dtype=np.uint8))
                lengths.append(len(ids_array))
                lines.append(item.line)
            else:
                pending.append(item)
                if len(pending) >= self.batch_size:
                    flush()
        flush()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TokenizedFile(
            file_index=file_index,
            uri=uri,
            tokens=np.concatenate(token_chunks) if token_chunks else np.zeros(0, dtype=np.int64),
            train_mask=np.concatenate(mask_chunks) if mask_chunks else np.zeros(0, dtype=np.uint8),
            offsets=offsets,
            lines=np.asarray(lines, dtype=np.int64),
            skipped=skipped,
        )
