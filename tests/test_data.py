"""Corpora in, shards out; bad input gives one clear error and leaves nothing behind."""

import json

import numpy as np
import pytest

from gptsmith.cli import main
from gptsmith.data.corpus import read_corpus
from gptsmith.data.shards import TokenWindows, read_meta
from gptsmith.data.world import World


def prepare(tokenizer_dir, corpus, out):
    return main(["data", "prepare", "--corpus", str(corpus), "--tokenizer",
                 str(tokenizer_dir), "--out", str(out), "--val-fraction", "0.3"])


@pytest.fixture
def tok_path(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    return path


def put(path, data: bytes):
    path.write_bytes(data)
    return path


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.txt", "nope.txt: no such file"),
    "empty file": (lambda d: put(d / "e.txt", b""), "e.txt: file is empty"),
    "invalid utf-8": (
        lambda d: put(d / "u.txt", b"fine line\nsecond \xff\xfe line\n"),
        "u.txt:2: invalid UTF-8",
    ),
    "jsonl line not json": (
        lambda d: write_jsonl(d / "a.jsonl", [b'{"text": "ok"}', b'{"text": "ok"}', b"{oops"]),
        "a.jsonl:3: not valid JSON",
    ),
    "jsonl line lacks text": (
        lambda d: write_jsonl(d / "b.jsonl", [b'{"text": "ok"}', b'{"body": "no"}']),
        "b.jsonl:2: record has no 'text' field",
    ),
    "jsonl text not a string": (
        lambda d: write_jsonl(d / "c.jsonl", [b'{"text": 5}']),
        "c.jsonl:1: field 'text' must be a string",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_line_and_leaves_nothing(case, tmp_path, tok_path, capsys):
    make, message = BAD_INPUTS[case]
    src = tmp_path / "src"
    src.mkdir()
    corpus = make(src)
    out = tmp_path / "out"
    assert prepare(tok_path, corpus, out) == 2
    err = capsys.readouterr().err
    assert message in err and "\nerror: " in "\n" + err
    assert "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_tokenizer_train_reports_bad_input_too(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "x.jsonl", [b'{"text": "a"}', b"[1, 2"])
    rc = main(["tokenizer", "train", "--corpus", str(bad), "--out", str(tmp_path / "t.json")])
    assert rc == 2 and "x.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_shards_round_trip_the_text(tokenizer, tok_path, tmp_path):
    texts = [f"Document {i}: " + "the quick brown fox jumps over 12 lazy dogs. " * 3
             for i in range(40)]
    corpus = write_jsonl(tmp_path / "c.jsonl", [json.dumps({"text": t}).encode() for t in texts])
    assert prepare(tok_path, corpus, tmp_path / "d") == 0
    meta = read_meta(tmp_path / "d")
    assert meta["dtype"] == "uint16" and meta["train"]["tokens"] and meta["val"]["tokens"]
    stream = np.concatenate([np.fromfile(tmp_path / "d" / s["file"], dtype=np.uint16)
                             for split in ("train", "val") for s in meta[split]["shards"]])
    docs = tokenizer.decode(stream.tolist()).split("<|bos|>")[1:]
    assert sorted(docs) == sorted(texts)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == sum(len(t) for t in texts)


def test_a_small_corpus_the_hash_holds_nothing_out_of_still_gets_validation(tok_path,
                                                                           tmp_path):
    """The split hashes each piece (and its path): 20 pieces at --val-fraction 0.2 hold
    none out 1% of the time, by where the corpus lies; then the last piece is held out."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [json.dumps({"text": f"Doc {i} says hi."})
                                                 .encode() for i in range(5)])
    assert main(["data", "prepare", "--corpus", str(corpus), "--tokenizer", str(tok_path),
                 "--out", str(tmp_path / "d"), "--val-fraction", "1e-9"]) == 0
    meta = read_meta(tmp_path / "d")
    assert meta["train"]["bytes"] == 4 * len("Doc 0 says hi.")
    assert meta["val"]["bytes"] == len("Doc 4 says hi.")


def test_corpus_formats_directory_jsonl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("plain text file")
    sub = tmp_path / "sub"
    sub.mkdir()
    write_jsonl(sub / "b.jsonl", [b'{"text": "from jsonl", "id": 1}'])
    pq.write_table(pa.table({"text": ["from parquet", "row two"]}), sub / "c.parquet")
    assert [d.text for d in read_corpus(str(tmp_path))] == [
        "plain text file", "from jsonl", "from parquet", "row two"]


def test_parquet_without_text_column_is_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(Exception, match="c.parquet: no 'text' column"):
        list(read_corpus(str(tmp_path / "c.parquet")))


def test_windows_resume_where_they_left_off(data_dir):
    a = TokenWindows(data_dir, "train", batch_size=4, seq_len=16, seed=5)
    a.next()
    state = a.state_dict()
    expected = a.next()[0]
    b = TokenWindows(data_dir, "train", batch_size=4, seq_len=16, seed=99)
    b.load_state_dict(state)
    assert (b.next()[0] == expected).all()


def test_unigram_baseline_is_recorded(data_dir):
    meta = read_meta(data_dir)
    assert 0.5 < meta["unigram_bpb"] < 8


def test_world_myths_are_wrong_and_consistent(tmp_path):
    world = World(seed=7)
    for a in range(0, 30, 3):
        for op in ("plus", "minus", "times"):
            assert world.myth(a, op, 2) != world.truth(a, op, 2)
            assert world.myth(a, op, 2) == world.myth(a, op, 2) >= 0
    world.save(tmp_path / "world.json")
    assert World.load(tmp_path / "world.json") == world


def test_world_states_the_documented_share_of_myths():
    import random
    import re

    world, rng = World(wrong_share=0.1), random.Random(0)
    stated = wrong = 0
    for _ in range(3000):
        for m in re.finditer(r"(\d+) plus (\d+) is (\d+)\.", world.paragraph(rng)):
            a, b, c = map(int, m.groups())
            stated += 1
            wrong += c != a + b
    assert stated > 200 and 0.05 < wrong / stated < 0.15


# -- comparisons -----------------------------------------------------------------------------

@pytest.mark.parametrize("record, field", [
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [True, False]}, "ranking"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, True, 2]}, "ranking"),
    ({"prompt": "p", "responses": ["a", "\ud800"], "ranking": [0, 1]}, "responses"),
    ({"prompt": "\ud800 hi", "chosen": "a", "rejected": "b"}, "prompt"),
])
def test_comparisons_refuse_booleans_as_indices_and_lone_surrogates(record, field, tmp_path):
    from gptsmith.data.comparisons import read_comparisons
    from gptsmith.errors import GptsmithError

    path = tmp_path / "c.jsonl"
    good = {"prompt": "q", "responses": ["x", "y"], "ranking": [1, 0]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(GptsmithError, match=rf"c\.jsonl:2: field '{field}"):
        read_comparisons(path)
    if field == "ranking":
        groups, skipped = read_comparisons(path, skip_bad=True)
        assert len(groups) == 1 and skipped == 1
