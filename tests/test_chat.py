"""The chat format: ids and loss mask from one function, for training and for generation."""

import pytest

from gptsmith.chat import check_conversation, prompt_ids, render


def conv(*turns, system=None):
    roles = ["user", "assistant"] * len(turns)
    msgs = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
    return ([{"role": "system", "content": system}] if system else []) + msgs


def test_mask_is_one_exactly_on_assistant_tokens_and_their_end(tokenizer):
    ids, mask = render(tokenizer, conv("What is 2 plus 2?", "4.", "And 3 plus 3?", "It is 6.",
                                       system="Be brief."))
    assert len(ids) == len(mask)
    learned = [i for i, m in zip(ids, mask, strict=True) if m]
    expected = [*tokenizer.encode("4."), tokenizer.end_id,
                *tokenizer.encode("It is 6."), tokenizer.end_id]
    assert learned == expected
    t = tokenizer.hf.token_to_id
    assert ids[:2] == [t("<|bos|>"), t("<|system|>")]
    assert ids.count(t("<|end|>")) == 5 and ids.count(t("<|user|>")) == 2
    assert ids.count(t("<|assistant|>")) == 2


def test_prompt_rendering_is_the_training_prefix(tokenizer):
    full, _ = render(tokenizer, conv("Hello there", "Hi!"))
    prompt = prompt_ids(tokenizer, conv("Hello there"))
    assert prompt[-1] == tokenizer.hf.token_to_id("<|assistant|>")
    assert full[:len(prompt)] == prompt


@pytest.mark.parametrize("messages,problem", [
    ([], "no messages"),
    (conv("hi"), "must end with an assistant message"),
    ([{"role": "assistant", "content": "x"}], "where 'user' was expected"),
    (conv("a", "b") + conv("c", "d")[1:], "where 'user' was expected"),
    (conv("a", "b") + [{"role": "system", "content": "s"}], "system message may only come"),
    ([{"role": "robot", "content": "x"}], "is not one of"),
    ([{"role": "user", "content": 3}], "content must be a string"),
])
def test_bad_conversations_are_explained(messages, problem):
    assert problem in check_conversation(messages)


def test_generation_prompts_must_end_with_the_user(tokenizer):
    with pytest.raises(ValueError, match="must end with a user message"):
        prompt_ids(tokenizer, conv("a", "b"))
