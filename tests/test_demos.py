"""Demonstrations in every format people bring, and clear errors for the ones that are wrong."""

import json

import pytest

from gptsmith.data.demos import read_demos
from gptsmith.errors import GptsmithError

EXPECTED = [{"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "5"}]
RECORDS = {
    "pairs": {"prompt": "What is 2 plus 3?", "response": "5"},
    "completion": {"prompt": "What is 2 plus 3?", "completion": "5"},
    "messages": {"messages": EXPECTED},
    "alpaca": {"instruction": "What is 2 plus 3?", "input": "", "output": "5"},
    "sharegpt": {"conversations": [{"from": "human", "value": "What is 2 plus 3?"},
                                   {"from": "gpt", "value": "5"}]},
}


def write(path, records, suffix):
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("fmt", RECORDS)
def test_every_format_in_every_file_type(fmt, suffix, tmp_path):
    path = write(tmp_path / f"d{suffix}", [RECORDS[fmt]], suffix)
    convs, skipped = read_demos(path)
    assert [c.messages for c in convs] == [EXPECTED] and skipped == 0
    assert convs[0].source == f"{path}:1"


def test_alpaca_input_joins_the_instruction(tmp_path):
    rec = {"instruction": "Add these.", "input": "2 and 3", "output": "5"}
    convs, _ = read_demos(write(tmp_path / "a.jsonl", [rec], ".jsonl"))
    assert convs[0].messages[0]["content"] == "Add these.\n\n2 and 3"


def test_sharegpt_system_and_multi_turn(tmp_path):
    rec = {"conversations": [{"from": "system", "value": "Be brief."},
                             {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                             {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}
    convs, _ = read_demos(write(tmp_path / "s.jsonl", [rec], ".jsonl"))
    assert [m["role"] for m in convs[0].messages] == ["system", "user", "assistant", "user",
                                                      "assistant"]


def test_format_can_be_forced(tmp_path):
    rec = {"prompt": "p", "response": "r", "messages": "not a list"}
    with pytest.raises(GptsmithError, match="field 'messages' must be a list"):
        read_demos(write(tmp_path / "f.jsonl", [rec], ".jsonl"))
    convs, _ = read_demos(tmp_path / "f.jsonl", fmt="pairs")
    assert convs[0].messages[1]["content"] == "r"


BAD = {
    "unknown format": ({"question": "q", "answer": "a"}, "record in no known format"),
    "no assistant ending": (
        {"messages": [{"role": "user", "content": "q"}]},
        "field 'messages': conversation must end with an assistant message"),
    "roles out of order": (
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a"}]},
        "field 'messages': messages[1].role is 'user' where 'assistant' was expected"),
    "response not a string": ({"prompt": "q", "response": 5}, "field 'response' must be a string"),
    "bad sharegpt role": ({"conversations": [{"from": "bot", "value": "x"}]},
                          "conversations[0].from must be one of"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_record_names_file_line_and_field(case, tmp_path):
    record, message = BAD[case]
    path = write(tmp_path / "bad.jsonl", [RECORDS["pairs"], record], ".jsonl")
    with pytest.raises(GptsmithError) as err:
        read_demos(path)
    assert f"{path}:2: {message}" in str(err.value)


def test_skip_bad_skips_and_counts(tmp_path):
    records = [RECORDS["pairs"], BAD["unknown format"][0], RECORDS["alpaca"],
               BAD["roles out of order"][0]]
    convs, skipped = read_demos(write(tmp_path / "m.jsonl", records, ".jsonl"), skip_bad=True)
    assert len(convs) == 2 and skipped == 2


def test_generation_reads_prompts(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "hi", "id": 7}, RECORDS["pairs"],
                                        {"messages": EXPECTED[:1]}], ".jsonl")
    convs, _ = read_demos(path, for_generation=True)
    assert [c.messages for c in convs] == [[{"role": "user", "content": "hi"}],
                                           EXPECTED[:1], EXPECTED[:1]]
    assert convs[0].extra == {"prompt": "hi", "id": 7}
