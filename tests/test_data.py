"""Calibration data: loading every file kind, seeded windows, BOS, provenance and clear errors."""

from __future__ import annotations

import json

import pytest

from hubprune.data import build_calibration, load_texts, token_windows, tokenizer_adds_bos
from hubprune.errors import DataError
from hubprune.plan import token_ids_sha256
from tests.tiny import SAMPLE_TEXT, char_tokenizer


@pytest.fixture
def tokenizer():
    return char_tokenizer()


def test_txt_jsonl_parquet_give_the_same_documents(tmp_path):
    docs = ["first document", "second one", "third"]
    (tmp_path / "a.txt").write_text("\n".join(docs) + "\n\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": docs}), tmp_path / "a.parquet")
    assert load_texts(str(tmp_path / "a.txt")).texts == docs
    assert load_texts(str(tmp_path / "a.jsonl"), text_column="body").texts == docs
    source = load_texts(str(tmp_path / "a.parquet"), text_column="body")
    assert source.texts == docs and source.kind == "file" and len(source.file_sha256) == 64


def test_windows_are_seeded_and_hashed(tmp_path, tokenizer):
    (tmp_path / "t.txt").write_text(SAMPLE_TEXT)
    source = load_texts(str(tmp_path / "t.txt"))
    a = build_calibration(tokenizer, source, samples=4, seq_len=32, seed=1)
    b = build_calibration(tokenizer, source, samples=4, seq_len=32, seed=1)
    c = build_calibration(tokenizer, source, samples=4, seq_len=32, seed=2)
    assert a.input_ids.shape == (4, 32)
    assert a.info.token_ids_sha256 == b.info.token_ids_sha256 == token_ids_sha256(a.input_ids)
    assert a.info.token_ids_sha256 != c.info.token_ids_sha256
    assert a.info.samples == 4 and a.info.seq_len == 32 and a.info.seed == 1


def test_bos_prepended_only_when_the_tokenizer_adds_it(tmp_path, tokenizer):
    from tokenizers.processors import TemplateProcessing

    (tmp_path / "t.txt").write_text(SAMPLE_TEXT)
    source = load_texts(str(tmp_path / "t.txt"))
    assert not tokenizer_adds_bos(tokenizer)
    plain = build_calibration(tokenizer, source, samples=2, seq_len=16, seed=0)
    assert not plain.info.bos_prepended and (plain.input_ids[:, 0] != tokenizer.bos_token_id).all()

    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tokenizer_adds_bos(tokenizer)
    with_bos = build_calibration(tokenizer, source, samples=2, seq_len=16, seed=0)
    assert with_bos.info.bos_prepended and with_bos.input_ids.shape == (2, 16)
    assert (with_bos.input_ids[:, 0] == 1).all()


def test_empty_and_short_data_are_clear_errors(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="contains no text"):
        load_texts(str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("tiny")
    source = load_texts(str(tmp_path / "short.txt"))
    with pytest.raises(DataError, match="only 4 tokens"):
        build_calibration(tokenizer, source, samples=2, seq_len=16, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        load_texts(str(tmp_path / "missing.txt"))


def test_missing_column_and_too_long_sequence(tmp_path, tokenizer):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no 'text' column \(it has: content\)"):
        load_texts(str(tmp_path / "a.jsonl"))
    (tmp_path / "t.txt").write_text(SAMPLE_TEXT)
    with pytest.raises(DataError, match="longer than the model allows"):
        build_calibration(
            tokenizer, load_texts(str(tmp_path / "t.txt")), samples=1, seq_len=512, seed=0, max_positions=256
        )


def test_offline_texts_are_real_text():
    source = load_texts("offline:lee-background")
    assert len(source.texts) == 300 and source.kind == "offline"
    assert sum(len(t) for t in source.texts) > 100_000
    xsum = load_texts("offline:xsum")
    assert len(xsum.texts) >= 990 and xsum.text_column == "document"  # one article is empty


def test_json_csv_and_bad_json_line(tmp_path):
    """Would catch: a file kind the loader drops, or a bad JSON line reported without its file."""
    docs = ["first document", "second one"]
    (tmp_path / "a.json").write_text(json.dumps([{"text": d} for d in docs]))
    (tmp_path / "a.csv").write_text("text,label\n" + "\n".join(f"{d},1" for d in docs) + "\n")
    assert load_texts(str(tmp_path / "a.json")).texts == docs
    assert load_texts(str(tmp_path / "a.csv")).texts == docs
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl is not a readable json file"):
        load_texts(str(tmp_path / "bad.jsonl"))


def test_windows_disjoint_and_strided_cover_the_stream(tokenizer):
    """Would catch: disjoint windows that overlap or keep a partial tail, and strided windows
    that score a token twice or skip one."""
    text = SAMPLE_TEXT[:100]
    disjoint = token_windows(tokenizer, [text], seq_len=30, policy="disjoint")
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert disjoint.windows == [stream[0:30], stream[30:60], stream[60:90]]
    strided = token_windows(tokenizer, [text], seq_len=30, policy="strided", stride=20, max_tokens=100)
    assert strided.scored_from == [1, 10, 10, 10, 20]  # the last window ends at the last token
    covered = []
    for window, start, first in zip(strided.windows, [0, 20, 40, 60, 70], strided.scored_from, strict=True):
        assert window == stream[start : start + 30]
        covered += range(start + first, start + 30)
    assert covered == list(range(1, 100))


def test_hub_dataset_without_the_hub_is_a_fast_clear_error(monkeypatch):
    """Would catch: a Hub dataset default that spends a minute in retries without the Hub, or an
    error that does not name the offline alternatives."""
    import time

    from hubprune import hub
    from hubprune.errors import HubUnreachableError

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="offline:lee-background.*offline:xsum.*or a local file"):
        load_texts("someone/not-cached-dataset", split="train")
    assert time.perf_counter() - start < 5
