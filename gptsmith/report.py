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

from gptsmith.errors import GptsmithError
from gptsmith.runs import atomic_write_text

NAMES = {"pretrain": "base", "sft": "SFT", "ppo": "PPO", "grpo": "GRPO", "rft": "RFT",
         "dpo": "DPO"}
RL = ("ppo", "grpo", "rft", "dpo")


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
    "grpo": lambda m: f"{m['steps']} iterations x {m['rollouts']} replies",
    "rft": lambda m: f"{m['steps']} iterations x {m['rollouts']} replies",
    "dpo": lambda m: f"{_count(m['train_pairs'])} comparisons",
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
    "grpo": lambda m, r: f"reward {m['reward']:.2f}, true accuracy {m['true_accuracy']:.1%} "
                         f"(held-out), KL {m['kl']:.2f} nats",
    "rft": lambda m, r: f"reward {m['reward']:.2f}, {m['kept']:.0%} of groups learned, true "
                        f"accuracy {m['true_accuracy']:.1%} (held-out)",
    "dpo": lambda m, r: f"held-out preference accuracy {m['val_accuracy']:.1%}, margin "
                        f"{m['val_margin']:.2f}",
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
                     "seconds": rec.get("seconds", 0.0), "beside": rec.get("beside", "")})
    return rows


def wall_seconds(rows: list[dict]) -> float:
    """The phases' time end to end: one run beside another (``beside``) counts only for
    as long as it outlasted that one."""
    seconds = {r["phase"]: r["seconds"] for r in rows}
    total = sum(r["seconds"] for r in rows if not r.get("beside"))
    for lead in {r["beside"] for r in rows if r.get("beside")}:
        longest = max(r["seconds"] for r in rows if r.get("beside") == lead)
        total += max(0.0, longest - seconds.get(lead, 0.0))
    return total


COLUMNS = ("phase", "status", "time", "peak memory", "data", "headline")


def summary_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS} if rows else {}
    lines = ["== summary (a skipped phase: the time and memory of the run that did it)",
             "  ".join(c.ljust(widths.get(c, len(c))) for c in COLUMNS).rstrip()]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip())
    total = wall_seconds(rows)
    beside = ", ".join(f"{r['phase']} beside {r['beside']}" for r in rows if r.get("beside"))
    lines.append(f"total {total:.1f}s ({total / 60:.1f} min)" +
                 (f"; side by side, counted once: {beside}" if beside else ""))
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
     "continues the text. Left: training loss per step (faint) and smoothed; right: "
     "validation bits per byte, below the unigram baseline of the table when the model uses "
     "context.", ["pretrain/loss.png"]),
    ("Supervised fine-tuning (SFT): the assistant",
     "The base model is trained further on demonstrations: a user asks, an assistant answers "
     "briefly. Only the assistant's tokens count in the loss. It learns the chat format, to "
     "answer and to end its turn; what it knows still comes from pre-training.",
     ["sft/loss.png"]),
    ("Labeling and the reward model",
     "The SFT model samples several replies per prompt and a labeler ranks them (with the "
     "built-in data, a program that knows the truth stands in for people: right beats wrong, "
     "then brief and finished). A reward model, the SFT transformer with a scalar head, "
     "learns to score the preferred reply higher. Right: how often it agrees with the "
     "labeler on held-out prompts (0.5 is chance), measured where it was evaluated.",
     ["rm/loss.png"]),
    ("RLHF with PPO",
     "PPO changes the SFT model to raise the reward model's score of its replies, while a KL "
     "penalty keeps it close to the SFT model. One quantity per panel: the RM score of the "
     "sampled replies, the held-out greedy scores, KL, entropy, reply length and end rate. "
     "The second plot puts the held-out true reward and RM score against sqrt(KL): where the "
     "RM score keeps rising while the true reward falls, the policy exploits the reward "
     "model's errors (over-optimisation, Gao et al. 2022).",
     ["ppo/ppo.png", "ppo/overoptimization.png"]),
    ("GRPO: a group of replies per prompt, no reward model",
     "For each prompt GRPO samples a group of replies, scores them with the reward (here the "
     "truth: a program that knows each prompt's answer), and pushes up the replies that beat "
     "their group's mean. No value model and no reward model; a KL penalty keeps it near the "
     "SFT model.", ["grpo/grpo.png"]),
    ("RFT: fine-tuning on the best of a group",
     "Rejection-sampling fine-tuning samples a group of replies per prompt, keeps the best one "
     "when the reward says it is good enough (here: a right answer), and fine-tunes on the "
     "kept replies as SFT does, beside a few of SFT's demonstrations where the recipe mixes "
     "them in. It moves the model's most likely reply, its greedy answer, to what its best "
     "samples do.", ["rft/rft.png"]),
    ("DPO: the comparisons, no reward model and no sampling",
     "DPO trains the SFT model directly on the labeler's comparisons: it raises the "
     "likelihood of the chosen reply relative to the rejected one, measured against the "
     "frozen SFT model. Right: held-out preference accuracy.", ["dpo/loss.png"]),
    ("Evaluation: the same held-out questions for every model",
     "Each model answers held-out questions whose facts it met only in pre-training: greedy "
     "and sampled accuracy, how often it states the corpus's myth, and how often it ends its "
     "turn.", ["eval.png"]),
]


# evaluate.question_kind's kinds, in the order the findings name them
KINDS = {"two-digit": "two-digit sums and differences", "two-digit times": "two-digit products",
         "one-digit": "one-digit"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _moved(a: float, b: float) -> str:
    """The change from ``a`` to ``b`` as "from 70% to 84% (up 14 points)"; in tenths of a
    point where whole ones would hide it ("from 69.7% to 70.3% (up 0.7 points)", not "from
    70% to 70% (up 1 points)")."""
    if round(100 * abs(b - a), 6) >= 2:
        d = round(100 * (b - a))
        return f"from {_pct(a)} to {_pct(b)} ({'up' if d > 0 else 'down'} {abs(d)} points)"
    d = round(100 * (b - a), 1)
    if d == 0:
        return f"from {_pct(a)} to {_pct(b)} (unchanged)"
    return (f"from {100 * a:.1f}% to {100 * b:.1f}% ({'up' if d > 0 else 'down'} {abs(d):g} "
            f"point{'' if abs(d) == 1 else 's'})")


def _talk_share(models: dict, key: str, label: str) -> str:
    """"; LABEL: SFT 95%, PPO 70%": each model's conversation measure ``key`` (how often
    it ends its turn, how varied its replies are, how often they loop), as the findings
    say it; "" where eval did not record it (runs evaluated before it did)."""
    shares = {m: r[key] for m, r in models.items() if r.get(key) is not None}
    return (f"; {label}: " + ", ".join(f"{NAMES.get(m, m)} {_pct(v)}"
                                       for m, v in shares.items())) if shares else ""


def _rl_prompts_are(records: dict) -> str:
    """What the built-in RL prompts hold: all sums, or a share of conversation (a demos
    phase setting; runs recorded before it moved there hold it in the data phase's)."""
    share = 0
    for phase in ("demos", "data"):
        world = ((records.get(phase) or {}).get("settings") or {}).get("world") or {}
        share = share or world.get("chat_prompt_share", 0)
    if share:
        return f"{share:.0%} of the RL prompts are conversation, the rest arithmetic"
    return "The RL prompts are all arithmetic"


def story(records: dict) -> list[str]:
    """The findings in words, from the numbers the phases recorded: what SFT changed, what
    each RL method changed (greedy and sampled), what nothing changed."""
    models = (records.get("eval") or {}).get("numbers", {}).get("models", {})
    numbers = {k: (v or {}).get("numbers", {}) for k, v in records.items()}
    out = []
    pre = numbers.get("pretrain", {})
    if "val_bpb" in pre and "unigram_bpb" in pre:
        learned = pre["val_bpb"] < pre["unigram_bpb"]
        out.append(f"Pre-training brought the validation loss to {pre['val_bpb']:.2f} bits per "
                   f"byte, against {pre['unigram_bpb']:.2f} for a model that ignores context"
                   + (": the base model uses context, it learned the language and the facts "
                      "of its corpus." if learned else ": not below it, so the base model "
                      "has not learned to use context yet (train it longer)."))
    base, sft = models.get("pretrain"), models.get("sft")
    if base and sft:
        taught = sft["end_rate"] - base["end_rate"] >= 0.2
        out.append(
            ("SFT taught the chat format: r" if taught else "R")
            + f"eplies that end their turn went from "
            f"{_pct(base['end_rate'])} (base) to {_pct(sft['end_rate'])} (SFT), and held-out "
            f"accuracy from {_pct(base['accuracy'])} to {_pct(sft['accuracy'])} greedy"
            + (f", {_pct(base.get('sampled_accuracy'))} to "
               f"{_pct(sft.get('sampled_accuracy'))} sampled at temperature 1"
               if sft.get("sampled_accuracy") is not None else "")
            + ". The facts still come from pre-training.")
    if "val_accuracy" in numbers.get("rm", {}):
        out.append(f"The reward model agrees with the labeler on "
                   f"{_pct(numbers['rm']['val_accuracy'])} of held-out comparisons.")
    sharpened = []
    start, named = (sft, "SFT") if sft else (base, "base")  # what RL started from
    for m in RL:
        row = models.get(m)
        if not (row and start):
            continue
        kl = numbers.get(m, {}).get("kl")
        line = (f"{NAMES[m]}{' (from the base model, no SFT)' * (named == 'base')} moved "
                f"greedy accuracy {_moved(start['accuracy'], row['accuracy'])}")
        if row.get("sampled_accuracy") is not None and \
                start.get("sampled_accuracy") is not None:
            line += (" and sampled accuracy "
                     + _moved(start["sampled_accuracy"], row["sampled_accuracy"]))
            if (row["sampled_accuracy"] - start["sampled_accuracy"]
                    > row["accuracy"] - start["accuracy"] + 0.02):
                sharpened.append(NAMES[m])
        out.append(line + (f", {kl:.2f} nats of KL from the {named} model." if kl is not None
                           else "."))
    if sharpened:
        out.append(f"{' and '.join(sharpened)} raised the sampled answers more than the greedy "
                   "one: RL here mostly makes the model choose, more often, an answer it "
                   "already gave sometimes; the best answer gains less than the typical one.")
    talk = {m: r.get("talk_number_rate") for m, r in models.items()
            if r.get("talk_number_rate") is not None}
    if talk and start and any(m in talk for m in RL):
        n = (records.get("eval") or {}).get("numbers", {}).get("open_prompts")
        out.append("Ordinary conversation (" + (f"{n} prompts" if n else "open prompts")
                   + ", e.g. \"Hello, how are you?\"), share answered with a number: "
                   + ", ".join(f"{NAMES.get(m, m)} {_pct(v)}" for m, v in talk.items())
                   + _talk_share(models, "talk_end_rate", "share that end their turn")
                   + _talk_share(models, "talk_distinct", "different replies")
                   + _talk_share(models, "talk_loop_rate", "replies caught in a loop (a "
                                 "three-word phrase three times)") + ". "
                   + _rl_prompts_are(records)
                   + "; a rise here is RL's cost to the conversation.")
    work = {m: r["work_rate"] for m, r in models.items() if r.get("work_rate") is not None}
    if any(work.values()):
        out.append("Held-out questions answered with shown work (a step before the answer), "
                   "greedy: " + ", ".join(f"{NAMES.get(m, m)} {_pct(v)}"
                                          for m, v in work.items()) + ".")
    kinds = {m: r for m, r in models.items() if "two-digit" in r.get("by_kind", {})}
    if kinds:
        out.append("Held-out questions by kind, greedy / sampled: " + "; ".join(
            name + ": " + ", ".join(f"{NAMES.get(m, m)} {_pct(r['by_kind'].get(kind))} / "
                                    f"{_pct(r.get('sampled_by_kind', {}).get(kind))}"
                                    for m, r in kinds.items())
            for kind, name in KINDS.items() if any(kind in r["by_kind"] for r in kinds.values()))
            + ".")
    if models:
        best = max(r["accuracy"] for r in models.values())
        worked = max(work.values(), default=0) >= 0.2
        out.append(f"What no phase changed: the best model still gets {_pct(1 - best)} of "
                   "held-out questions wrong greedily. Their facts appear only in the "
                   "pre-training corpus, among myths; the later phases see none of them and "
                   + ("reach them only through worked steps, each a smaller fact the model "
                      "must know." if worked else
                      "can only re-weight the answers the model already gives."))
    return out


def _img(root: Path, rel: str) -> str:
    data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
    return f'<img alt="{escape(rel)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Rows of already-escaped cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


OPEN_SHOWN = 8  # conversational prompts whose replies the report shows


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
            for q in answers["open"][:OPEN_SHOWN]]
    return ("<h2>Where the models differ</h2>"
            "<h3>Held-out questions, greedy replies</h3>"
            "<p class=cap>The questions where the models disagree most (some right, some "
            "wrong) come first. &#10003; exactly right, &#10007; wrong. The base model "
            "continues the text; SFT answers and stops; the RL models' replies are those their "
            "method moved towards.</p>"
            + _table(["question", "truth", *models], known)
            + "<h3>Ordinary conversation (no right answer)</h3>"
            + (f"<p class=cap>The first {OPEN_SHOWN} of {len(answers['open'])} held-out "
               "prompts; all are in answers.json.</p>"
               if len(answers["open"]) > OPEN_SHOWN else "")
            + _table(["prompt", *models], free)
            + _two_digit(answers, models))


def _two_digit(answers: dict, models: list[str]) -> str:
    """System 2: every model's greedy reply to the seed's 17 x 24 and to the first held-out
    two-digit questions (answers.json holds them when the questions have two-digit ones)."""
    if not answers.get("two_digit"):
        return ""
    rows = [[f"<td>{escape(q['prompt'])}</td>", f"<td>{escape(q['answer'])}</td>",
             *(_reply(r) for r in q["replies"])] for q in answers["two_digit"]]
    return ("<h3>Worked out or answered at once: two-digit questions</h3>"
            "<p class=cap>The seed's 17 x 24 (a product of two two-digit numbers: outside "
            "the tiny world, which multiplies by one digit at most), then the first held-out "
            "two-digit questions. A reply that states steps before its answer shows its "
            "work; how often each model does is in the summary above.</p>"
            + _table(["question", "truth", *models], rows))


def _settings(root: Path, records: dict) -> str:
    """Each phase's settings as it ran them, with the real paths ({out} is the directory)."""
    parts = []
    for name, rec in records.items():
        settings = (rec or {}).get("settings")
        if settings:
            text = json.dumps(settings, indent=1).replace("{out}", str(root))
            parts.append(f"<h4>{escape(name)}</h4><pre>{escape(text)}</pre>")
    if not parts:
        return ""
    return ("<details><summary>Settings of each phase, as they ran</summary>"
            + "".join(parts) + "</details>")


def _next_steps(root: Path) -> str:
    start = root / "sft" if (root / "sft").exists() else root / "pretrain"
    last = next((root / m for m in RL if (root / m / "model.safetensors").exists()), start)
    named = " ".join(f"{NAMES.get(m, m).lower()}={root / m}" for m in ("pretrain", "sft", *RL)
                     if (root / m / "model.safetensors").exists())
    lines = [("Chat with the assistant in the terminal", f"gptsmith chat {last}"),
             ("Serve the models (OpenAI-compatible API and a chat page with a model picker)",
              f"gptsmith serve {named}"),
             ("Compare them on your own questions (a .jsonl of prompt and answer)",
              f"gptsmith eval --model {start} --model {last} "
              "--questions my_questions.jsonl"),
             ("Bring your own data (each file replaces a built-in one)",
              "gptsmith pipeline --out runs/mine --corpus my_corpus.txt --demos my_demos.jsonl "
              "--comparisons my_rankings.jsonl --rl-prompts my_prompts.jsonl"),
             ("Try the other RL methods on the same SFT model",
              f"gptsmith pipeline --out {root} --rl all") if start.name == "sft" else
             ("Try both truth-rewarded RL methods from the same base model",
              f"gptsmith pipeline --out {root} --rl grpo,rft --rl-from base"),
             ("Rebuild this page", f"gptsmith report {root}")]
    return "<h2>What next</h2>" + "".join(f"<p class=cap>{escape(what)}:</p><pre>"
                                          f"{escape(cmd)}</pre>" for what, cmd in lines)


def write_report(root: Path, rows: list[dict], records: dict | None = None) -> Path:
    """``root/report.html`` from what the pipeline left in ``root`` (``records``: the phases
    of pipeline.json, for the findings and the settings)."""
    records = records or {}
    found = story(records)
    parts = [f"<h1>gptsmith pipeline: {escape(str(root))}</h1>",
             "<p class=cap>How a ChatGPT-style assistant is built, phase by phase: pre-training "
             "on raw text, supervised fine-tuning on demonstrations, then preference learning "
             "on rankings of the model's own replies (a reward model and PPO, or GRPO, or "
             "DPO).</p>"]
    if found:
        parts += ["<h2>What happened</h2><ul>",
                  *(f"<li>{escape(line)}</li>" for line in found), "</ul>"]
    if (root / "answers.json").exists():
        parts.append(_answers(json.loads((root / "answers.json").read_text())))
    parts += ["<h2>Summary</h2>",
              _table(list(COLUMNS), [[f"<td>{escape(r[c])}</td>" for c in COLUMNS]
                                     for r in rows]),
              "<p class=note>Time and peak resident memory of the run that did each phase "
              "(* the process's peak so far, where it cannot be reset per phase).</p>"]
    for title, caption, images in SECTIONS:
        present = [rel for rel in images if (root / rel).exists()]
        if not present:
            continue
        parts += [f"<h2>{escape(title)}</h2>", f"<p class=cap>{escape(caption)}</p>",
                  *(_img(root, rel) for rel in present)]
        if images[0] == "pretrain/loss.png" and (root / "pretrain/samples.txt").exists():
            parts += ["<p class=cap>What the base model writes after the start of a text:</p>",
                      f"<pre>{escape((root / 'pretrain/samples.txt').read_text())}</pre>"]
    parts += [_next_steps(root), _settings(root, records)]
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>gptsmith report: {escape(str(root))}</title><style>{STYLE}</style>"
            "</head><body>" + "\n".join(parts) + "</body></html>\n")
    out = root / "report.html"
    atomic_write_text(out, page)
    return out


def rebuild_report(root: Path) -> Path:
    """report.html of a pipeline directory again, from its pipeline.json and files."""
    book = root / "pipeline.json"
    if not book.exists():
        raise GptsmithError(f"{root}: no pipeline.json here; give a directory that "
                            "`gptsmith pipeline --out` made")
    try:
        records = json.loads(book.read_text())["phases"]
    except (ValueError, KeyError, TypeError) as e:
        raise GptsmithError(f"{book}: not a pipeline record ({e})") from None
    redraw_plots(root)
    phases = list(records)
    return write_report(root, summary_rows(records, phases, set(phases)), records)


TITLES = {"pretrain": "pre-training", "sft": "SFT", "rm": "reward model", "dpo": "DPO"}


def redraw_plots(root: Path) -> None:
    """Every run's plots drawn again from its metrics.jsonl (as the current code draws them)."""
    from gptsmith.plots import plot_metrics, plot_ppo, plot_rl

    for name in ("pretrain", "sft", "rm", "ppo", "grpo", "rft", "dpo"):
        metrics = root / name / "metrics.jsonl"
        if not metrics.exists():
            continue
        plot_metrics(metrics, root / name / "loss.png", f"{TITLES.get(name, name)}: {root / name}")
        if name == "ppo":
            plot_ppo(metrics, root / name)
        elif name in ("grpo", "rft"):
            plot_rl(metrics, root / name / f"{name}.png", NAMES[name])
