"""Chat templates as data: a Jinja template per model, rendered the way Hugging Face renders
``tokenizer_config.json``'s ``chat_template``, so an imported model is prompted exactly as it
was trained. gptsmith's own format is one more template (``OURS``); ``chat.render`` turns a
rendered conversation into (ids, loss mask).

Shipped formats (``--chat-template NAME`` where a command takes one): ours, chatml,
llama3, mistral. An imported model brings its own.
"""

from __future__ import annotations

import functools
from datetime import datetime

OURS = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL = (  # [INST] turns; a system prompt goes before the first user message
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + (messages[0]['content'] + '\n\n' if loop.index0 == 1 and "
    "messages[0]['role'] == 'system' else '') + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
SHIPPED = {"ours": OURS, "chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL}


class TemplateError(ValueError):
    """A chat template that fails to render, or does not render prefixes consistently."""


def _raise(message: str):
    raise TemplateError(message)


@functools.cache
def compile_template(source: str):
    """A Jinja template in a sandbox, with the environment transformers gives chat templates
    (blocks trimmed, loop controls, ``raise_exception``, ``strftime_now``)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except Exception as e:  # jinja2's TemplateSyntaxError and friends
        raise TemplateError(f"chat template does not parse: {e}") from None


def render_text(source: str, messages: list[dict], add_generation_prompt: bool,
                special: dict[str, str]) -> str:
    """The conversation as the template writes it (``special``: bos_token, eos_token ...)."""
    try:
        return compile_template(source).render(messages=messages,
                                               add_generation_prompt=add_generation_prompt,
                                               **special)
    except TemplateError:
        raise
    except Exception as e:
        raise TemplateError(f"chat template failed to render: {type(e).__name__}: {e}") \
            from None
