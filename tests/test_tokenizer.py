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


def test_flush_returns_a_trailing_partial_character(tokenizer):
    ids = tokenizer.encode("ab東")[:-1]  # the last byte of 東 is missing
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == "ab"
    assert decoder.flush() == "\ufffd" == tokenizer.decode(ids)[2:]
    assert decoder.flush() == ""  # nothing is sent twice


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1 << 20), max_size=40), st.booleans())
def test_streamed_text_equals_decoding_all_ids(tokenizer, draws, skip_special):
    """Whatever ids a model emits (stray bytes, cut characters, special tokens), the pieces
    and the final flush join to the decode of all of them."""
    ids = [d % tokenizer.vocab_size for d in draws]
    decoder = IncrementalDecoder(tokenizer, skip_special=skip_special)
    text = "".join(decoder.push(i) for i in ids) + decoder.flush()
    assert text == tokenizer.decode(ids, skip_special=skip_special)


def test_chat_stream_reply_writes_the_whole_reply(tiny_model, tokenizer):
    """What the terminal chat writes piece by piece is the reply, a cut last character too."""
    from gptsmith.chat import stream_reply
    from gptsmith.engine import Sampling

    messages = [{"role": "user", "content": "Tell me about York."}]
    cut = 0
    for seed in range(12):
        written = []
        reply = stream_reply(tiny_model, tokenizer, messages,
                             Sampling(max_tokens=9, seed=seed), written.append)
        assert "".join(written) == reply.text
        cut += reply.text.endswith("\ufffd")
    assert cut  # some of these replies end inside a character
