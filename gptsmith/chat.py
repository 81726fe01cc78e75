"""The chat format: one function turns a conversation into token ids and a loss mask.

    <|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...

The mask is 1 exactly on assistant text and on the <|end|> that closes each assistant turn:
what SFT learns from. Rendering a prompt for generation is the same function with
``for_generation=True`` (the conversation ends with a user turn and <|assistant|> is
appended), so training and inference cannot disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptsmith.engine import Sampling, batch_rows, generate, stream
from gptsmith.model import GPT
from gptsmith.tokenizer import IncrementalDecoder, Tokenizer

ROLES = ("system", "user", "assistant")

# The one default for sampling a conversation a person reads (gptsmith chat, generate,
# sample, and the web chat page): a little below 1 so that replies stay on topic, sampled
# rather than greedy so that they vary; top-k and top-p off. Elsewhere on purpose: eval is
# greedy (the model's most likely answer, reproducible); label, studio, PPO and GRPO sample
# at 1 (the policy's own distribution, which ranking and RL need); the API defaults to 1 as
# OpenAI's does, because its clients expect that.
CONVERSATION_TEMPERATURE = 0.7


def check_conversation(messages: list[dict], for_generation: bool = False) -> str | None:
    """What is wrong with ``messages`` (None if nothing): roles, order, content, ending."""
    if not isinstance(messages, list) or not messages:
        return "conversation has no messages"
    expected = "user"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"} or "role" not in m:
            return f"messages[{i}] must be an object with 'role' and 'content'"
        role, content = m["role"], m.get("content")
        if role not in ROLES:
            return f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return f"messages[{i}].content must be a string"
        if role == "system":
            if i != 0:
                return f"messages[{i}]: a system message may only come first"
            continue
        if role != expected:
            return f"messages[{i}].role is {role!r} where {expected!r} was expected " \
                   "(turns must alternate user, assistant)"
        expected = "assistant" if role == "user" else "user"
    last = messages[-1]["role"]
    if for_generation and last != "user":
        return "a prompt must end with a user message"
    if not for_generation and last != "assistant":
        return "conversation must end with an assistant message"
    return None


def render(tokenizer: Tokenizer, messages: list[dict], for_generation: bool = False,
           with_mask: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 on assistant tokens, closing end-of-turn included), in the
    tokenizer's chat template (``with_mask=False``: the ids and an empty mask, in time linear
    in the conversation's length; the mask renders every assistant turn's prefix).

    The template writes the conversation as text, which is tokenized in one piece (special
    token strings parsed), so the ids equal ``transformers``' ``apply_chat_template``. Each
    assistant turn's span comes from rendering the conversation up to it: from the end of
    the prompt for that turn to the end of its end-of-turn token. Special-token strings
    inside message contents are defused first (a word joiner after their first character),
    so no one can inject a turn by typing one.
    """
    from gptsmith.templates import TemplateError, render_text

    problem = check_conversation(messages, for_generation)
    if problem:
        raise ValueError(problem)
    msgs = [{"role": m["role"], "content": _defuse(m["content"], tokenizer.added_special)}
            for m in messages]
    special = tokenizer.special_tokens()
    template = tokenizer.chat_template
    text = render_text(template, msgs, for_generation, special)
    if not with_mask:
        return tokenizer.hf_special.encode(text, add_special_tokens=False).ids, []
    spans = []
    end = tokenizer.hf.id_to_token(tokenizer.end_id)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = render_text(template, msgs[:i], True, special)
        turn = render_text(template, msgs[:i + 1], False, special)
        if not (text.startswith(prompt) and text.startswith(turn)):
            raise TemplateError("the chat template renders a conversation's prefix "
                                "differently from the conversation: no loss mask can be made")
        start, turn_end = len(prompt), len(turn)
        closing = text.find(end, start, turn_end)
        spans.append((start, closing + len(end) if closing >= 0 else turn_end))
    encoding = tokenizer.hf_special.encode(text, add_special_tokens=False)
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in encoding.offsets]
    return encoding.ids, mask


def _defuse(text: str, specials: list[str]) -> str:
    for token in specials:
        if token in text:
            text = text.replace(token, token[0] + "\u2060" + token[1:])
    return text


def prompt_ids(tokenizer: Tokenizer, messages: list[dict]) -> list[int]:
    """The ids to generate the next assistant turn from."""
    return render(tokenizer, messages, for_generation=True, with_mask=False)[0]


@dataclass
class Reply:
    text: str
    ended: bool   # the model closed its turn with <|end|>
    tokens: int   # tokens generated, <|end|> included
    ids: list[int] = dataclasses.field(default_factory=list)  # generated, without <|end|>
    stopped: bool = False  # interrupted (Ctrl-C) before it ended


def complete(model: GPT, tokenizer: Tokenizer, conversations: list[list[dict]], s: Sampling,
             batch_size: int = 0, compile: bool = False) -> list[Reply]:
    """The next assistant turn of each conversation, generated in batches by the engine
    (of ``batch_size`` rows; 0: as many as ``engine.batch_rows`` fits in memory), with
    compiled steps if ``compile`` (:mod:`gptsmith.decode`).

    Row i of the whole list samples with seed ``s.seed + i``, whatever the batch size.
    """
    s = dataclasses.replace(s, stop_ids=tokenizer.stop_ids)
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    if not batch_size and prompts:
        longest = max(len(p) for p in prompts) + s.max_tokens
        batch_size = batch_rows(model.cfg, min(longest, model.cfg.seq_len))
    replies = []
    for start in range(0, len(prompts), batch_size or 1):
        outs = generate(model, prompts[start:start + batch_size],
                        dataclasses.replace(s, seed=s.seed + start), compile=compile)
        for ids in outs:
            ended = bool(ids) and ids[-1] in tokenizer.stop_ids
            body = ids[:-1] if ended else ids
            replies.append(Reply(tokenizer.decode(body, skip_special=True), ended, len(ids),
                                 body))
    return replies


COMMANDS = {
    "/reset": "forget the conversation",
    "/system TEXT": "set the system prompt and reset; /system alone clears it",
    "/help": "show this",
    "/quit": "leave (or /exit, Ctrl-D, or Ctrl-C at the prompt)",
}
HELP = ("commands: " + "; ".join(f"{c} ({what})" for c, what in COMMANDS.items())
        + ". Ctrl-C during a reply stops it; the conversation goes on.")


def stream_reply(model: GPT, tokenizer: Tokenizer, messages: list[dict], s: Sampling,
                 write) -> Reply:
    """Generate the next assistant turn, passing text pieces to ``write`` as they come.
    Ctrl-C (KeyboardInterrupt) stops it: the reply so far comes back with ``stopped`` set."""
    decoder = IncrementalDecoder(tokenizer, skip_special=True)
    s = dataclasses.replace(s, stop_ids=tokenizer.stop_ids)
    ids: list[int] = []
    stopped = False
    try:
        for (token,) in stream(model, [prompt_ids(tokenizer, messages)], s):
            ids.append(token)
            if token not in tokenizer.stop_ids:
                write(decoder.push(token))
    except KeyboardInterrupt:
        stopped = True
    write(decoder.flush())
    ended = bool(ids) and ids[-1] in tokenizer.stop_ids
    body = ids[:-1] if ended else ids
    return Reply(tokenizer.decode(body, skip_special=True), ended, len(ids), body, stopped)


def wrap(text: str, width: int | None = None) -> str:
    """``text`` broken into lines at word boundaries, as wide as the terminal (at most 100)."""
    import shutil
    import textwrap

    width = width or min(100, shutil.get_terminal_size((80, 24)).columns)
    return textwrap.fill(text, width=max(20, width - 1), break_long_words=False,
                         break_on_hyphens=False)


def repl(model: GPT, tokenizer: Tokenizer, s: Sampling, system: str = "",
         read=input, write=None, width: int | None = None) -> None:
    """An interactive multi-turn chat: read a line, stream the reply, keep the history.

    Ctrl-C during a reply stops the reply and keeps the conversation (with the reply as far
    as it went); Ctrl-C or Ctrl-D at the prompt leaves. A line starting with / is a command:
    an unknown one is refused with the list (// sends a message that starts with /).
    """
    import sys

    def out(text: str) -> None:
        (write or sys.stdout.write)(text)
        sys.stdout.flush()

    def conversation() -> list[dict]:
        return ([{"role": "system", "content": system}] if system else []) + history

    history: list[dict] = []
    out(wrap(f"chatting with a {model.num_params() / 1e6:.1f}M-parameter model. {HELP}", width)
        + "\n")
    turn = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            out("\n")
            return
        text = line.strip()
        if not text:
            continue
        command = text.split(maxsplit=1)[0]
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            out(wrap(HELP, width) + "\n")
            continue
        if command == "/reset":
            history = []
            out("(conversation reset)\n")
            continue
        if command == "/system":
            system, history = text[len("/system"):].strip(), []
            out(f"(system prompt {'set' if system else 'cleared'}; conversation reset)\n")
            continue
        if text.startswith("//"):
            text = text[1:]
        elif text.startswith("/"):
            out(wrap(f"(unknown command {command}; nothing was sent to the model. {HELP} To "
                     "send a message that starts with /, begin it with //)", width) + "\n")
            continue
        history.append({"role": "user", "content": text})
        if len(prompt_ids(tokenizer, conversation())) >= model.cfg.seq_len - 1:
            history = [history[-1]]  # keep the newest turn; older ones no longer fit
            out("(older turns dropped: the context is full)\n")
            if len(prompt_ids(tokenizer, conversation())) >= model.cfg.seq_len - 1:
                out(f"(that message is too long for a context of {model.cfg.seq_len})\n")
                history = []
                continue
        out("assistant> ")
        reply = stream_reply(model, tokenizer, conversation(),
                             dataclasses.replace(s, seed=s.seed + turn), out)
        if reply.stopped:
            out(" [stopped; Ctrl-C again at the prompt or Ctrl-D leaves]\n")
            if not reply.text.strip():
                history.pop()  # nothing said: as if the message was never sent
                continue
        else:
            out("\n" if reply.ended else " [no end of turn]\n")
        history.append({"role": "assistant", "content": reply.text})
        turn += 1
