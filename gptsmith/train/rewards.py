"""Rewards that are programs: the truth labeler, a reward-model run, or a user's function.

``--reward`` takes one or more comma-separated specs, each optionally weighted with ``@W``:

- ``truth``: the built-in labeler's score (``label.record_score``) against each prompt's
  ``answer`` field (2 if correct, +1 if the reply ends its turn briefly; on prompts marked
  ``show_work``, a right worked reply scores 4); a conversational prompt (``"kind":
  "talk"``, no answer) scores a reply without a number above one with a number;
- a reward-model run directory: its score of the reply as generated;
- ``module:function``: ``function(prompts, replies, **fields) -> list[float]``, where
  ``prompts`` and ``replies`` are lists of strings (the last user message, the reply text)
  and ``fields`` holds every other field of the prompt records, one list per field.

e.g. ``--reward truth`` or ``--reward runs/rm@0.5,mylib.rewards:is_polite@2``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gptsmith.chat import Reply
from gptsmith.errors import GptsmithError
from gptsmith.label import record_score
from gptsmith.train.rollout import Replies, reward_scores


@dataclass
class RewardTerm:
    name: str
    weight: float
    score: Callable[[list[dict], Replies], list[float]]


def _truth(records: list[dict], r: Replies) -> list[float]:
    missing = [q for q in records if "answer" not in q and q.get("kind") != "talk"]
    if missing:
        raise GptsmithError("--reward truth needs an 'answer' field in every prompt record "
                            "(or \"kind\": \"talk\" on a conversational one); this one has "
                            f"neither: {str(missing[0])[:120]}")
    tokens = r.mask.sum(1).long().tolist()
    ended = r.ended.tolist()
    return [float(record_score(Reply(t, e, n), q))
            for t, e, n, q in zip(r.texts, ended, tokens, records, strict=True)]


def _user_function(spec: str) -> Callable:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise GptsmithError(f"--reward {spec}: cannot import module {module_name!r} ({e})") \
            from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise GptsmithError(f"--reward {spec}: module {module_name!r} has no function "
                            f"{func_name!r}")

    def score(records: list[dict], r: Replies) -> list[float]:
        prompts = [q["messages"][-1]["content"] for q in records]
        keys = sorted({k for q in records for k in q} - {"messages", "prompt"})
        fields = {k: [q.get(k) for q in records] for k in keys}
        out = func(prompts, list(r.texts), **fields)
        if not isinstance(out, list | tuple) or len(out) != len(records):
            raise GptsmithError(f"--reward {spec}: returned {type(out).__name__} of length "
                                f"{len(out) if hasattr(out, '__len__') else '?'}; expected a "
                                f"list of {len(records)} numbers")
        values = []
        for i, v in enumerate(out):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise GptsmithError(f"--reward {spec}: value {i} is {v!r}, not a finite number")
            values.append(float(v))
        return values

    return score


def parse_rewards(spec: str, load_reward_model: Callable[[str], torch.nn.Module]
                  ) -> list[RewardTerm]:
    """The weighted terms of ``spec``; ``load_reward_model(run_dir)`` loads an RM run."""
    terms = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, weight = part.rpartition("@") if "@" in part else (part, "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise GptsmithError(f"--reward {part}: weight {weight!r} is not a number") from None
        if name == "truth":
            terms.append(RewardTerm(name, w, _truth))
        elif Path(name).is_dir():
            model = load_reward_model(name)
            if model.cfg.head != "scalar":
                raise GptsmithError(f"--reward {name}: not a reward model run")

            def rm_score(records, r, model=model):
                with torch.no_grad():
                    return reward_scores(model, r).tolist()

            terms.append(RewardTerm(name, w, rm_score))
        elif ":" in name:
            terms.append(RewardTerm(name, w, _user_function(name)))
        else:
            raise GptsmithError(f"--reward {part}: not 'truth', a reward-model run directory "
                                "or module:function")
    if not terms:
        raise GptsmithError("--reward is empty: give truth, an RM run or module:function")
    return terms


def total_reward(terms: list[RewardTerm], records: list[dict], r: Replies) -> torch.Tensor:
    """Σ weight · term, per reply (B,)."""
    total = torch.zeros(len(records))
    for t in terms:
        total += t.weight * torch.tensor(t.score(records, r), dtype=torch.float)
    return total.to(r.seq.device)
