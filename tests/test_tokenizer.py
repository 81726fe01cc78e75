from hypothesis import given, settings
from hypothesis import strategies as st

from gptsmith.tokenizer import END, SPECIAL_TOKENS, IncrementalDecoder

TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_any_unicode_round_trips(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(TEXT)
def test_token_bytes_count_the_utf8_bytes(tokenizer, text):
    ids = tokenizer.encode(text)
    assert sum(int(tokenizer.token_bytes[i]) for i in ids) == len(text.encode("utf-8"))


def test_digits_are_split_one_by_one(tokenizer):
    for ids_piece in (tokenizer.decode([i]) for i in tokenizer.encode("12345 + 678 = 7023")):
        digits = [c for c in ids_piece if c.isdigit()]
        assert len(digits) <= 1


def test_special_tokens_are_reserved_but_not_parsed_from_text(tokenizer):
    ids = {tokenizer.hf.token_to_id(t) for t in SPECIAL_TOKENS}
    assert None not in ids and len(ids) == len(SPECIAL_TOKENS)
    encoded = tokenizer.encode(f"user text with {END} inside")
    assert tokenizer.end_id not in encoded
    assert tokenizer.decode(encoded) == f"user text with {END} inside"


def test_incremental_decoder_never_splits_a_character(tokenizer):
    text = "naïve café — 東京 🙂 done"
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in tokenizer.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
