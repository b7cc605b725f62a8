"""Tokenization, chat masking, packing and the loader's model inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cpt_core.storage import Storage, parse_uri
from cpt_trainer.data.documents import DataError, Document
from cpt_trainer.data.loader import IGNORE_INDEX, to_model_inputs
from cpt_trainer.data.shards import CacheDamaged, RowPacker, ShardLayout, ShardReader, ShardWriter
from cpt_trainer.data.tokenize import DOC_START, TRAIN, DocumentTokenizer
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "examples" / "models" / "tiny-llama")


def test_text_documents_end_with_eos(tokenizer) -> None:
    ids = DocumentTokenizer(tokenizer).encode_texts(["Article 1 of the Code.", "Second document"])
    assert all(doc[-1] == tokenizer.eos_token_id for doc in ids)
    assert tokenizer.decode(ids[0][:-1]) == "Article 1 of the Code."


def test_chat_labels_cover_exactly_the_assistant_turns(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which article governs pilotage?"},
        {"role": "assistant", "content": "Article 14."},
        {"role": "user", "content": "Fee?"},
        {"role": "assistant", "content": "Forty crowns."},
    ]
    ids, mask = DocumentTokenizer(tokenizer).encode_chat(messages)
    trained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert trained == "Article 14.<|im_end|>\nForty crowns.<|im_end|>\n"
    untrained = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert "Which article" in untrained and "Be brief" in untrained and "Forty" not in untrained


def test_chat_without_template_is_a_clear_error(tokenizer) -> None:
    tok = DocumentTokenizer(tokenizer)
    tokenizer_copy = tokenizer.__class__.from_pretrained(ROOT / "examples" / "models" / "tiny-llama")
    tokenizer_copy.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        DocumentTokenizer(tokenizer_copy).encode_chat([{"role": "assistant", "content": "x"}])
    assert tok.encode_chat([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def _pack(tmp_path: Path, docs: list[list[int]], seq_len: int, pad_tail: bool, masks: list[list[int]] | None = None):
    layout = ShardLayout(seq_len, "<u2", rows_per_shard=3)
    writer = ShardWriter(tmp_path, "train", layout)
    packer = RowPacker(writer, pad_token=0, pad_tail=pad_tail)
    tokens = np.concatenate([np.asarray(d) for d in docs])
    mask = np.concatenate([np.asarray(m, dtype=np.uint8) for m in masks]) if masks else np.ones(len(tokens), np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    packer.add(tokens, mask, offsets, np.ones(len(docs), dtype=bool))
    packer.finish()
    reader = ShardReader(Storage(), parse_uri(str(tmp_path)), layout, "train", writer.rows)
    return packer, reader.read(list(range(writer.rows)))


def test_packing_fills_rows_and_keeps_document_boundaries(tmp_path: Path) -> None:
    docs = [[10, 11, 12, 2], [20, 21, 2], [30, 31, 32, 33, 34, 2], [40, 2]]  # 15 tokens
    packer, (tokens, flags) = _pack(tmp_path, docs, seq_len=4, pad_tail=False)
    assert tokens.tolist() == [[10, 11, 12, 2], [20, 21, 2, 30], [31, 32, 33, 34]]
    assert packer.dropped_tokens == 3  # "2, 40, 2" does not fill a row
    assert ((flags[:, :] & DOC_START) != 0).tolist() == [
        [True, False, False, False],
        [True, False, False, True],
        [False, False, False, False],
    ]
    # The first token of a document carries no label; the rest do.
    assert ((flags & TRAIN) != 0).tolist()[1] == [False, True, True, False]
    input_ids, labels, positions = to_model_inputs(tokens, flags)
    assert positions.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]]
    assert labels.tolist()[1] == [IGNORE_INDEX, 21, 2, IGNORE_INDEX]
    assert (input_ids == tokens).all()


def test_holdout_tail_is_padded_without_labels(tmp_path: Path) -> None:
    packer, (tokens, flags) = _pack(tmp_path, [[5, 6, 2]], seq_len=5, pad_tail=True)
    assert tokens.tolist() == [[5, 6, 2, 0, 0]] and packer.padded_tokens == 2
    _, labels, _ = to_model_inputs(tokens, flags)
    assert labels.tolist() == [[IGNORE_INDEX, 6, 2, IGNORE_INDEX, IGNORE_INDEX]]


def test_chat_mask_survives_packing(tmp_path: Path) -> None:
    docs = [[1, 2, 3, 4, 9], [5, 6, 7, 9]]
    masks = [[0, 0, 1, 1, 0], [0, 1, 1, 0]]
    _, (tokens, flags) = _pack(tmp_path, docs, seq_len=9, pad_tail=False, masks=masks)
    _, labels, _ = to_model_inputs(tokens, flags)
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX, 6, 7, IGNORE_INDEX]]


def test_shards_split_at_rows_per_shard_and_detect_corruption(tmp_path: Path) -> None:
    docs = [[i, i + 1, 2] for i in range(10, 40, 3)]  # 30 tokens -> 7 rows of 4
    _, (tokens, _) = _pack(tmp_path, docs, seq_len=4, pad_tail=False)
    assert sorted(p.name for p in tmp_path.glob("train-*.bin")) == [
        "train-00000.bin",
        "train-00001.bin",
        "train-00002.bin",
    ]
    assert len(tokens) == 7
    shard = tmp_path / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-5])
    reader = ShardReader(Storage(), parse_uri(str(tmp_path)), ShardLayout(4, "<u2", 3), "train", 7)
    with pytest.raises(CacheDamaged, match=r"is damaged: .*train-00001\.bin is 31 bytes, expected 36; run again"):
        reader.read([4])


def test_tokenize_file_keeps_order_and_lines(tokenizer) -> None:
    docs = [Document(line=i * 2 + 1, text=f"document number {i}") for i in range(600)]
    result = DocumentTokenizer(tokenizer, batch_size=64).tokenize_file(0, "mem://x", docs, chat=False)
    assert result.documents == 600 and result.lines.tolist() == [d.line for d in docs]
    third = result.tokens[result.offsets[3] : result.offsets[4]]
    assert tokenizer.decode(third[:-1]) == "document number 3"
