"""The pipeline's summary: a table for the terminal, and ``report.html``, one page that holds
everything (plots as base64 PNGs, no scripts, nothing fetched), so it opens offline.

Every piece of text on the page goes through ``html.escape``: model replies are data,
never markup.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from gptsmith.runs import atomic_write_text

NAMES = {"pretrain": "base", "sft": "SFT", "ppo": "RLHF"}


def _count(n: float) -> str:
    """3.1M, 118k, 7.7k, 460."""
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k"
    return f"{n:g}"


def _asked(records: dict, model: str) -> str:
    """How ``model`` did in the evaluation, if it ran."""
    row = (records.get("eval") or {}).get("numbers", {}).get("models", {}).get(model)
    if not row:
        return ""
    return f"; held-out {row['accuracy']:.1%} right, {row['end_rate']:.0%} end their turn"


def _eval(m: dict) -> str:
    """Accuracy per model: greedy, and sampled where it was measured."""
    def right(r: dict) -> str:
        sampled = r.get("sampled_accuracy")
        return f"{r['accuracy']:.1%}" + (f"/{sampled:.1%}" if sampled is not None else "")

    sampled = any(r.get("sampled_accuracy") is not None for r in m["models"].values())
    return ", ".join(f"{NAMES.get(k, k)} {right(r)}" for k, r in m["models"].items()) + (
        " right (greedy/sampled)" if sampled else " right (greedy)")


DATA = {
    "tokenizer": lambda m: f"{_count(m['corpus_bytes'])} bytes of text",
    "data": lambda m: f"{_count(m['train_tokens'])} train + {_count(m['val_tokens'])} val tokens",
    "pretrain": lambda m: f"{_count(m['tokens'])} tokens seen",
    "samples": lambda m: f"{m['prompts']} prompts",
    "demos": lambda m: f"{_count(m['train.jsonl'])} demos, {_count(m['prompts.jsonl'])} RL "
                       f"prompts, {m['questions.jsonl']} questions",
    "sft": lambda m: f"{_count(m['train_examples'])} demonstrations",
    "label": lambda m: f"{_count(m['prompts'])} prompts x {m['k']}, {_count(m['pairs'])} "
                       "comparisons",
    "rm": lambda m: f"{_count(m['train_pairs'])} comparisons",
    "ppo": lambda m: f"{m['steps']} iterations x {m['rollouts']} rollouts",
    "eval": lambda m: f"{m['questions']} questions x {len(m['models'])} models",
}
HEADLINE = {
    "tokenizer": lambda m, r: f"{m['vocab_size']:,} ids, {m['bytes_per_token']} bytes/token",
    "data": lambda m, r: f"unigram baseline {m['unigram_bpb']:.3f} bits/byte",
    "pretrain": lambda m, r: f"val {m['val_bpb']:.3f} bits/byte (unigram "
                             f"{m['unigram_bpb']:.3f})",
    "samples": lambda m, r: "pretrain/samples.txt",
    "demos": lambda m, r: f"{m['val.jsonl']} demos held out for the SFT validation loss",
    "sft": lambda m, r: f"val loss {m['val_loss']:.3f}{_asked(r, 'sft')}",
    "label": lambda m, r: f"{m['ranked']} prompts ranked, {m['all_tied']} all tied",
    "rm": lambda m, r: f"held-out pairwise accuracy {m['val_accuracy']:.1%}",
    "ppo": lambda m, r: f"RM score {m['rm_score']:.2f}, true accuracy "
                        f"{m['true_accuracy']:.1%} (held-out), KL {m['kl']:.2f} nats",
    "eval": lambda m, r: _eval(m),
}


def _text(fn, *args) -> str:
    """What ``fn`` makes of a record's numbers; "" where they (or ``fn``) are missing."""
    try:
        return fn(*args)
    except (KeyError, TypeError, ZeroDivisionError):
        return ""


def summary_rows(records: dict, phases: list[str], ran: set[str]) -> list[dict]:
    """phase | status | time | peak memory | data | headline, from pipeline.json's records
    (a skipped phase shows the time and memory of the run that did it)."""
    rows = []
    for name in phases:
        rec = records.get(name) or {}
        numbers = rec.get("numbers", {})
        memory = "-"
        if "peak_rss_mb" in rec:
            memory = f"{rec['peak_rss_mb']:,} MB" + ("*" if rec["peak_memory"] != "phase" else "")
            if "peak_gpu_mb" in rec:
                memory += f" (GPU {rec['peak_gpu_mb']:,} MB)"
        rows.append({"phase": name, "status": "ran" if name in ran else "skipped",
                     "time": f"{rec['seconds']:.1f}s" if "seconds" in rec else "-",
                     "peak memory": memory, "data": _text(DATA.get(name), numbers),
                     "headline": _text(HEADLINE.get(name), numbers, records),
                     "seconds": rec.get("seconds", 0.0)})
    return rows


COLUMNS = ("phase", "status", "time", "peak memory", "data", "headline")


def summary_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS} if rows else {}
    lines = ["== summary (a skipped phase: the time and memory of the run that did it)",
             "  ".join(c.ljust(widths.get(c, len(c))) for c in COLUMNS).rstrip()]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip())
    total = sum(r["seconds"] for r in rows)
    lines.append(f"total {total:.1f}s ({total / 60:.1f} min)")
    if any(r["peak memory"].split(" (")[0].endswith("*") for r in rows):
        lines.append("* peak of the whole process so far: this system cannot reset the peak "
                     "per phase (/proc/self/clear_refs)")
    return "\n".join(lines)


# -- report.html ---------------------------------------------------------------------------
STYLE = """body{font:15px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:.3em .5em;vertical-align:top;text-align:left}th{background:#f3f3f3}
.cap{color:#444;max-width:46em}img{max-width:100%}pre{background:#f7f7f7;padding:.6em;
white-space:pre-wrap}.right{background:#e6f6e6}.wrong{background:#fbe7e7}
.note{color:#777;font-size:.85em}"""

SECTIONS = [  # (title, caption, images relative to the pipeline directory)
    ("Pre-training: the base model",
     "A GPT learns to predict the next token of a large, noisy corpus (the built-in one: "
     "Shakespeare mixed with arithmetic prose that repeats a myth for some facts). It learns "
     "the language and the facts, myths included, but not to answer: asked a question, it "
     "continues the text. Training loss, and validation bits per byte: below the unigram "
     "baseline of the table, the model uses context.", ["pretrain/loss.png"]),
    ("Supervised fine-tuning (SFT): the assistant",
     "The base model is trained further on demonstrations: a user asks, an assistant answers "
     "briefly. Only the assistant's tokens count in the loss. It learns the chat format, to "
     "answer and to end its turn; what it knows still comes from pre-training.",
     ["sft/loss.png"]),
    ("Labeling and the reward model",
     "The SFT model samples several replies per prompt and a labeler ranks them (with the "
     "built-in data, a program that knows the truth stands in for people: right beats wrong, "
     "then brief and finished). A reward model, the SFT transformer with a scalar head, "
     "learns to score the preferred reply higher; held-out pairwise accuracy says how often "
     "it agrees with the labeler on prompts it never saw.", ["rm/loss.png"]),
    ("RLHF with PPO",
     "PPO changes the SFT model to raise the reward model's score of its replies, while a KL "
     "penalty keeps it close to the SFT model. Top: reward per iteration (the RM's score of "
     "rollouts, and the true reward and accuracy of greedy held-out answers); bottom: KL to "
     "the SFT model. Second plot: true reward and RM score against sqrt(KL). Where the RM "
     "score keeps rising while the true reward falls, the policy exploits the reward model's "
     "errors (over-optimisation, Gao et al. 2022).", ["ppo/ppo.png", "ppo/overoptimization.png"]),
    ("Evaluation: the same held-out questions for every model",
     "Each model answers held-out questions whose facts it met only in pre-training: greedy "
     "and sampled accuracy, how often it states the corpus's myth, and how often it ends its "
     "turn.", ["eval.png"]),
]


def _img(root: Path, rel: str) -> str:
    data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
    return f'<img alt="{escape(rel)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of already-escaped cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _reply(r: dict) -> str:
    mark = {True: ("right", "&#10003; "), False: ("wrong", "&#10007; ")}.get(r.get("right"))
    cls, sign = mark or ("", "")
    end = "" if r["ended"] else ' <span class="note">[no end of turn]</span>'
    return f'<td class="{cls}">{sign}{escape(r["text"])}{end}</td>'


def _answers(answers: dict) -> str:
    models = [NAMES.get(m, m) for m in answers["models"]]
    known = [[f"<td>{escape(q['prompt'])}</td>", f"<td>{escape(q['answer'])}</td>",
              *(_reply(r) for r in q["replies"])] for q in answers["questions"]]
    free = [[f"<td>{escape(q['prompt'])}</td>", *(_reply(r) for r in q["replies"])]
            for q in answers["open"]]
    return ("<h3>Held-out questions, greedy replies</h3>"
            "<p class=cap>&#10003; exactly right, &#10007; wrong. The base model continues "
            "the text; SFT answers and stops; RLHF's replies are those PPO moved towards what the "
            "reward model scores high.</p>"
            + _table(["question", "truth", *models], known)
            + "<h3>Open prompts (no known answer)</h3>"
            + _table(["prompt", *models], free))


def write_report(root: Path, rows: list[dict]) -> Path:
    """``root/report.html`` from what the pipeline left in ``root``."""
    parts = [f"<h1>gptsmith pipeline: {escape(str(root))}</h1>",
             "<p class=cap>How a ChatGPT-style assistant is built, phase by phase: pre-training "
             "on raw text, supervised fine-tuning on demonstrations, a reward model trained on "
             "rankings of the model's own replies, then reinforcement learning (PPO) against "
             "that reward model.</p>", "<h2>Summary</h2>",
             _table(list(COLUMNS), [[f"<td>{escape(r[c])}</td>" for c in COLUMNS]
                                    for r in rows]),
             "<p class=note>Time and peak resident memory of the run that did each phase "
             "(* the process's peak so far, where it cannot be reset per phase).</p>"]
    for title, caption, images in SECTIONS:
        found = [rel for rel in images if (root / rel).exists()]
        if not found:
            continue
        parts += [f"<h2>{escape(title)}</h2>", f"<p class=cap>{escape(caption)}</p>",
                  *(_img(root, rel) for rel in found)]
        if images[0] == "pretrain/loss.png" and (root / "pretrain/samples.txt").exists():
            parts += ["<p class=cap>What the base model writes after the start of a text:</p>",
                      f"<pre>{escape((root / 'pretrain/samples.txt').read_text())}</pre>"]
    if (root / "answers.json").exists():
        parts.append(_answers(json.loads((root / "answers.json").read_text())))
    if (root / "config.yaml").exists():
        parts.append("<details><summary>Settings (config.yaml)</summary>"
                     f"<pre>{escape((root / 'config.yaml').read_text())}</pre></details>")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>gptsmith report: {escape(str(root))}</title><style>{STYLE}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")
    out = root / "report.html"
    atomic_write_text(out, page)
    return out
