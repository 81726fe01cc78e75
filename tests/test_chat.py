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
    long = conv(*[f"turn {i}" for i in range(21)])  # 10 exchanges, then the user: no mask
    assert prompt_ids(tokenizer, long) == render(tokenizer, long, for_generation=True)[0]
    assert render(tokenizer, long, for_generation=True, with_mask=False)[1] == []


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


# -- the terminal chat (repl) with scripted input -----------------------------------------

def scripted(*lines):
    """``input`` replaced: each line in turn (an exception instance is raised), then EOF."""
    queue = list(lines)

    def read(prompt):
        if not queue:
            raise EOFError
        line = queue.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    return read


@pytest.fixture
def fake_stream(monkeypatch, tokenizer):
    """The engine's stream replaced: call i yields the ids of ``replies[i]``, then <|end|>
    (or, for a reply ending in ^C, KeyboardInterrupt); the prompts it was given are kept."""
    import gptsmith.chat as chat

    calls = {"prompts": [], "replies": []}

    def stream(model, prompts, s):
        calls["prompts"].append(tokenizer.decode(prompts[0]))
        reply = calls["replies"][len(calls["prompts"]) - 1]
        for token in tokenizer.encode(reply.removesuffix("^C")):
            yield (token,)
        if reply.endswith("^C"):
            raise KeyboardInterrupt
        yield (tokenizer.end_id,)

    monkeypatch.setattr(chat, "stream", stream)
    return calls


def chat_session(tiny_model, tokenizer, read, width=80):
    from gptsmith.chat import repl
    from gptsmith.engine import Sampling

    shown = []
    repl(tiny_model, tokenizer, Sampling(max_tokens=20), read=read, write=shown.append,
         width=width)
    return "".join(shown)


def test_ctrl_c_stops_the_reply_and_keeps_the_conversation(tiny_model, tokenizer, fake_stream):
    fake_stream["replies"] = ["to be or^C", "fine"]
    shown = chat_session(tiny_model, tokenizer, scripted("hello there", "and now?"))
    assert "assistant> to be or [stopped" in shown and "assistant> fine\n" in shown
    second = fake_stream["prompts"][1]  # the stopped reply is part of the conversation
    assert second.index("hello there") < second.index("to be or") < second.index("and now?")
    assert "resume" not in shown


def test_ctrl_c_before_the_first_token_forgets_the_message(tiny_model, tokenizer, fake_stream):
    fake_stream["replies"] = ["^C", "fine"]
    chat_session(tiny_model, tokenizer, scripted("hello there", "and now?"))
    assert "hello there" not in fake_stream["prompts"][1]  # turns still alternate


@pytest.mark.parametrize("leave", [KeyboardInterrupt(), EOFError()])
def test_ctrl_c_or_ctrl_d_at_the_prompt_leaves(tiny_model, tokenizer, fake_stream, leave):
    fake_stream["replies"] = ["one^C", "never"]
    chat_session(tiny_model, tokenizer, scripted("hi", leave, "not read"))
    assert len(fake_stream["prompts"]) == 1


def test_unknown_commands_are_refused_with_the_list(tiny_model, tokenizer, fake_stream):
    fake_stream["replies"] = ["a path"]
    shown = chat_session(tiny_model, tokenizer,
                         scripted("/foo bar", "/resett", "//etc is what?", "/quit", "unread"))
    assert shown.count("unknown command") == 2 and "unknown command /foo;" in shown
    assert all(c in shown.split("unknown command /foo")[1] for c in
               ("/reset", "/system", "/help", "/quit"))
    assert len(fake_stream["prompts"]) == 1 and "/etc is what?" in fake_stream["prompts"][0]
    assert "/foo" not in fake_stream["prompts"][0]


def test_the_banner_wraps_at_word_boundaries(tiny_model, tokenizer):
    from gptsmith.chat import HELP

    shown = chat_session(tiny_model, tokenizer, scripted(), width=40)
    lines = shown.strip().splitlines()
    assert len(lines) > 3 and all(len(line) < 40 for line in lines)
    assert " ".join(lines).split() == f"chatting with a {tiny_model.num_params() / 1e6:.1f}" \
        f"M-parameter model. {HELP}".split()  # no word broken


def test_an_interrupted_chat_does_not_talk_of_resuming(tiny_run, monkeypatch, capsys):
    import gptsmith.chat as chat
    from gptsmith.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "repl", interrupted)
    assert main(["chat", str(tiny_run)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" not in err
