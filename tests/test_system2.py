"""System 2: worked solutions in the tiny world, scored on their final answer, preferred by
the labeler when right; conversation among the RL prompts; the default world unchanged."""

import dataclasses
import hashlib
import json
import random
import re

import pytest

import gptsmith.data.default_demos as default_demos
from gptsmith.chat import Reply
from gptsmith.data.default_demos import TALK_PROMPTS, write_default_demos
from gptsmith.data.worked import has_work, plain, step_facts
from gptsmith.data.world import QUESTIONS, World
from gptsmith.evaluate import (
    final_answer,
    is_correct,
    load_questions,
    loops,
    question_kind,
    shows_work,
    work_rate,
)
from gptsmith.label import rank, record_score, talk_score, truth_score

SYSTEM2 = World(max_operand=99, max_factor=9, max_multiplicand=99, worked_share=0.5)
CONVS = [["Hello", "Hi there."], ["How are you?", "Fine, thanks."],
         ["What is AI?", "A field of study."]]
EXPR = r"\d+(?: [-+x] \d+)*"
CHAIN = re.compile(rf"{EXPR}(?: = {EXPR})+")
OPS = {"+": "plus", "-": "minus", "x": "times"}


def value(expr: str) -> int:
    return eval(expr.replace(" x ", " * "))  # only digits and + - x: see EXPR


def links(text: str) -> list[tuple[str, str]]:
    """Every (left, right) of every equation chain in the text."""
    out = []
    for m in CHAIN.finditer(text):
        sides = m.group(0).split(" = ")
        out += list(zip(sides, sides[1:], strict=False))
    return out


def check_steps(text: str) -> None:
    """Every equation in the text holds, every 'write/carry' and 'add a 0' follows."""
    pairs = links(text)
    assert pairs, text
    for left, right in pairs:
        assert value(left) == value(right), f"{left} = {right} in: {text}"
    for total, digit, carry in re.findall(r"(\d+), write (\d+) carry (\d+)", text):
        assert (int(digit), int(carry)) == (int(total) % 10, int(total) // 10), text
    for before, after in re.findall(r"= (\d+)[;,]? (?:then )?add a 0: (\d+)", text):
        assert int(after) == 10 * int(before), text


def multi_digit_facts(world: World, n: int, seed: int = 0) -> list[tuple[int, str, int]]:
    rng, facts = random.Random(seed), []
    while len(facts) < n:
        fact = world.sample_fact(rng)
        if has_work(fact):
            facts.append(fact)
    return facts


@pytest.fixture
def chatterbot(monkeypatch):
    def use(convs):
        monkeypatch.setattr(default_demos, "chatterbot_conversations", lambda: convs)
    return use


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Recorded from the code before worked solutions existed (commit 77d5f54).
BEFORE = {
    20: ("553f927b47c2a2bd", {"prompts.jsonl": "f19632e2b66f542a",
                              "questions.jsonl": "3b4c0875d8275e9f",
                              "train.jsonl": "83c469ff9430283a", "val.jsonl": "d09c25622c16331a"}),
    99: ("1285047cfe7a7f03", {"prompts.jsonl": "601cabb1682b2f68",
                              "questions.jsonl": "415e0294fc4e50f3",
                              "train.jsonl": "f3b788c94c86818a", "val.jsonl": "777ffcdaaaee0760"}),
}


@pytest.mark.parametrize("max_operand", [20, 99])
def test_without_worked_solutions_the_world_writes_what_it_wrote_before(
        max_operand, chatterbot, tmp_path):
    chatterbot(CONVS)
    world = World(max_operand=max_operand)
    docs, files = BEFORE[max_operand]
    assert digest("\n".join(world.documents(20000))) == docs
    write_default_demos(world, tmp_path, n_arithmetic=300, n_questions=60, n_prompts=300)
    assert {name: digest((tmp_path / name).read_text()) for name in files} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no talk.jsonl


def test_old_world_files_load_with_the_new_settings_off(tmp_path):
    old = {"seed": 1234, "max_operand": 20, "max_factor": 10, "wrong_share": 0.1,
           "small_share": 0.5, "arithmetic_share": 0.65}
    (tmp_path / "world.json").write_text(json.dumps(old))
    assert World.load(tmp_path / "world.json") == World()
    SYSTEM2.save(tmp_path / "s2.json")
    assert World.load(tmp_path / "s2.json") == SYSTEM2


def test_two_digit_operands_and_products_of_two_digits_by_one():
    rng = random.Random(0)
    facts = [SYSTEM2.sample_fact(rng) for _ in range(3000)]
    sums = [f for f in facts if f[1] != "times"]
    products = [f for f in facts if f[1] == "times"]
    assert max(max(a, b) for a, _, b in sums) == 99 and min(a - b for a, op, b in sums
                                                            if op == "minus") >= 0
    assert max(a for a, _, _ in products) == 99 and max(b for _, _, b in products) == 9


def test_worked_solutions_hold_at_every_step_and_end_with_the_answer():
    world, rng = SYSTEM2, random.Random(1)
    for fact in multi_digit_facts(world, 400):
        text = world.worked(fact, rng)
        check_steps(text)
        assert final_answer(text, numeric=True) == str(world.truth(*fact)), text
        assert shows_work(text), text


def test_the_seeds_example_is_worked_by_parts():
    texts = {World().worked((17, "times", 24), random.Random(i)) for i in range(20)}
    assert any("17 x 24 = 17 x 20 + 17 x 4 = 340 + 68 = 408" in t for t in texts)
    for t in texts:
        check_steps(t)
        assert t.endswith("408.")


def test_the_corpus_states_worked_solutions_in_varied_wordings():
    world = World(max_operand=99, worked_share=1.0, wrong_share=0.0)
    text = "\n".join(world.documents(30000))
    for left, right in links(text):
        assert value(left) == value(right), f"{left} = {right}"
    assert "carry 1" in text and "borrow" in text and "tens" in text
    assert len(re.findall(r"\d+ [-+] \d+ = \d+ [-+] \d+ [-+] \d+", text)) > 5  # by parts


def test_a_wrong_step_states_its_facts_myth_and_carries_to_the_final_answer():
    """A wrong worked mention: one step holds its own small fact's myth; the steps after
    it compute from it, so the final answer is off by that step's error (or ten times it,
    for a step in the tens)."""
    world = World(max_operand=99, max_factor=9, max_multiplicand=99, worked_share=1.0)
    rng = random.Random(2)
    for fact in multi_digit_facts(world, 300):
        copy = random.Random()
        copy.setstate(rng.getstate())
        steps = step_facts(fact, random.Random(copy.getrandbits(32)))
        text = world.worked(fact, rng, wrong=True)
        off = int(final_answer(text, numeric=True)) - world.truth(*fact)
        errors = {(world.myth(*s) - world.truth(*s)) * place for s in steps for place in (1, 10)}
        assert off != 0 and off in errors, text
        assert any(value(left) != value(right) for left, right in links(text)), text


def test_the_corpus_gets_worked_solutions_wrong_in_the_share_it_gets_facts_wrong():
    world, rng = World(max_operand=99, worked_share=1.0, wrong_share=0.2), random.Random(3)
    wrong = n = 0
    for _ in range(300):
        for m in re.finditer(r"(\d+) ([-+]) (\d+): (.+?); (?:so|that|which)[^.]*?(\d+)\.",
                             world.paragraph(rng)):
            a, op, b = int(m.group(1)), OPS[m.group(2)], int(m.group(3))
            n += 1
            wrong += int(m.group(5)) != world.truth(a, op, b)
    assert n > 150 and 0.1 < wrong / n < 0.3


def test_demonstrations_mix_brief_and_worked_answers_all_right():
    world, rng = SYSTEM2, random.Random(4)
    answers = [(f, world.answer(f, rng)) for f in multi_digit_facts(world, 400)]
    worked = [(f, a) for f, a in answers if shows_work(a)]
    assert 0.35 < len(worked) / len(answers) < 0.65
    for fact, a in answers:
        assert is_correct(a, str(world.truth(*fact))), a
    for _, a in worked:
        check_steps(a)
    one_digit = World(max_operand=99, worked_share=1.0)
    assert not any(shows_work(one_digit.answer((3, "plus", 4), rng)) for _ in range(50))


def test_a_worked_answer_never_states_a_held_out_fact():
    world, rng = World(max_operand=99, worked_share=1.0), random.Random(5)
    answers = [world.answer((47, "plus", 38), rng, avoid={(7, "plus", 8)}) for _ in range(20)]
    assert not any(shows_work(a) or "7 + 8" in a for a in answers)  # its ones column
    assert all(is_correct(a, "85") for a in answers)
    answers = [world.answer((47, "plus", 38), rng, avoid={(5, "plus", 8)}) for _ in range(20)]
    assert all(a == "7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85."
               for a in answers)


TRUTH = World().truth


def test_demonstrations_work_in_one_plain_style_the_corpus_in_many():
    """The plain style: columns (or, for a product of two two-digit numbers, a factor's tens
    then its ones), steps joined by "; ", "so the answer is N." last; step_facts(fact,
    None) lists what it states."""
    assert plain((60, "minus", 45), TRUTH) == (
        "0 is less than 5, so borrow: 10 - 5 = 5; the 6 becomes 5; 5 - 4 = 1; "
        "so the answer is 15.", 15)
    assert plain((17, "times", 4), TRUTH)[0] == (
        "7 x 4 = 28, write 8 carry 2; 1 x 4 = 4, 4 + 2 = 6; so the answer is 68.")
    assert step_facts((4, "times", 17), None) == [(4, "times", 7), (4, "times", 1), (4, "plus", 2)]
    assert plain((90, "times", 9), TRUTH)[0] == "0 x 9 = 0; 9 x 9 = 81; so the answer is 810."
    assert plain((17, "times", 24), TRUTH)[0] == (
        "17 x 20 = 340; 17 x 4 = 68; 340 + 68 = 408; so the answer is 408.")
    assert step_facts((47, "plus", 38), None) == [(7, "plus", 8), (4, "plus", 3)]
    world, rng = World(max_operand=99, max_factor=9, max_multiplicand=99, worked_share=1.0), \
        random.Random(6)
    for fact in multi_digit_facts(world, 200):
        a = world.answer(fact, rng)
        assert a.endswith(f"; so the answer is {world.truth(*fact)}.") and shows_work(a), a
    corpus = "\n".join(world.documents(20000))
    brief = dataclasses.replace(world, demo_worked_share=0.0)  # the corpus still works
    assert not any(shows_work(brief.answer(f, rng)) for f in multi_digit_facts(world, 50))
    assert "\n".join(brief.documents(20000)) == corpus
    assert len({m for m in re.findall(r"; (so|that|which)\b", corpus)}) == 3
    # and the other way round: worked demonstrations beside a corpus without any (an
    # imported model's pipeline reads only the demonstrations)
    demos_only = dataclasses.replace(world, worked_share=0.0, demo_worked_share=1.0)
    assert all(shows_work(demos_only.answer(f, rng)) for f in multi_digit_facts(world, 50))
    no_work = dataclasses.replace(demos_only, demo_worked_share=-1.0)
    assert demos_only.documents(200) == no_work.documents(200)
    assert not any(shows_work(no_work.answer(f, rng)) for f in multi_digit_facts(world, 50))
    assert default_demos.question_record(demos_only, (47, "plus", 38), rng)["show_work"]


def stated_facts(text: str) -> set[tuple[int, str, int]]:
    """The two-operand facts a text states as steps (a carry step states its first two)."""
    return {(int(x), OPS[op], int(y))
            for x, op, y in re.findall(r"(\d+) ([-+x]) (\d+)(?: [-+] \d+)? = \d+", text)}


def test_held_out_facts_are_in_no_demonstration_and_no_rl_prompt(chatterbot, tmp_path):
    chatterbot(CONVS)
    world = World(max_operand=99, max_factor=9, max_multiplicand=99, worked_share=0.7,
                  chat_prompt_share=0.1)
    write_default_demos(world, tmp_path, n_arithmetic=600, n_questions=150, n_prompts=400)
    read = {name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
            for name in ("train.jsonl", "val.jsonl", "prompts.jsonl", "questions.jsonl")}
    held_out = {tuple(q["fact"]) for q in read["questions.jsonl"]}
    assert any(has_work(f) for f in held_out) and any(not has_work(f) for f in held_out)
    held_prompts = {q["prompt"] for q in read["questions.jsonl"]}
    demos = [r["messages"] for r in read["train.jsonl"] + read["val.jsonl"]]
    assert sum(shows_work(m[1]["content"]) for m in demos) > 100
    for m in demos:
        assert not stated_facts(m[1]["content"]) & held_out, m
        assert m[0]["content"] not in held_prompts
    for p in read["prompts.jsonl"]:
        assert "fact" not in p or tuple(p["fact"]) not in held_out
        assert p.get("show_work", False) == ("fact" in p and has_work(tuple(p["fact"])))


def test_prompt_variety_asks_demonstrations_and_rl_prompts_in_other_wordings(chatterbot,
                                                                           tmp_path):
    chatterbot(CONVS)
    plain_world = World(max_operand=99, max_factor=9, worked_share=0.4, demo_worked_share=1.0)
    varied_world = dataclasses.replace(plain_world, prompt_variety=0.5)
    files = {}
    for name, world in (("plain", plain_world), ("varied", varied_world)):
        write_default_demos(world, tmp_path / name, n_arithmetic=400, n_questions=60,
                            n_prompts=300)
        files[name] = {f: [json.loads(x) for x in (tmp_path / name / f).read_text().splitlines()]
                       for f in ("train.jsonl", "prompts.jsonl", "questions.jsonl")}
    usual = {re.escape(q.format(a="@", b="@")).replace("@", r"\d+")
             for qs in QUESTIONS.values() for q in qs}

    def is_usual(text: str) -> bool:
        return any(re.fullmatch(u, text) for u in usual)

    # the held-out questions are the same, in the corpus's wordings
    assert files["plain"]["questions.jsonl"] == files["varied"]["questions.jsonl"]
    assert all(is_usual(q["prompt"]) for q in files["varied"]["questions.jsonl"])
    for name, share in (("plain", 0), ("varied", 0.5)):
        asked = [r["messages"][0]["content"] for r in files[name]["train.jsonl"]
                 if re.search(r"\d", r["messages"][0]["content"])]
        prompts = [p["prompt"] for p in files[name]["prompts.jsonl"]]
        for questions in (asked, prompts):
            other = sum(not is_usual(q) for q in questions) / len(questions)
            # a varied question is one of the usual ones a third of the time or more
            assert (other == 0) if share == 0 else 0.25 < other < share, (name, other)
        if share:
            assert any(q[0].islower() for q in prompts) and any(q[-1].isdigit() for q in asked)
            assert any("Calculate" in q or "+" in q for q in asked)
    for p in files["varied"]["prompts.jsonl"]:  # each prompt still asks its own fact
        a, op, b = p["fact"]
        assert re.findall(r"\d+", p["prompt"]) in ([str(a), str(b)], [str(b), str(a)]), p
        assert p["answer"] == str(World().truth(a, op, b))


def test_final_answer_is_the_last_number_of_a_worked_reply():
    worked = "47 + 38: 7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85."
    assert final_answer(worked, numeric=True) == "85" and is_correct(worked, "85")
    assert not is_correct(worked.replace("85.", "86."), "85")
    assert not is_correct("7 + 8 = 15, write 5 carry 1", "85")  # cut off mid-work
    assert is_correct("85", "85") and is_correct("47 plus 38 is 85.", "85")  # brief as before


def test_a_reply_caught_in_a_loop_is_told_from_one_that_repeats_a_little():
    assert loops("I am not a lot of the lot of the lot of the lot of the study")
    assert loops("I am not a bots of the study of the study of the study")
    assert not loops("I am not.") and not loops("")
    # worked sums repeat words, but no three-word phrase three times
    assert not loops("7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85.")
    assert not loops("9 minus 1 equals 8. 9 minus 1 equals 7.")


def test_what_counts_as_showing_work():
    assert shows_work("7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85.")
    assert shows_work("17 x 24 = 17 x 20 + 17 x 4 = 340 + 68 = 408")
    assert shows_work("3 is less than 7, so borrow: 13 - 7 = 6; 7 - 4 = 3; so 36.")
    for brief in ["85", "It is 85.", "47 + 38 = 85", "47 plus 38 is 85.", "The answer is 85."]:
        assert not shows_work(brief), brief
    replies = [Reply("4 x 6 = 24; add a 0: 240", True, 12), Reply("240", True, 3)]
    assert work_rate(replies) == 0.5


WORKED = "7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so the answer is 85."
REPLIES = {  # what the labeler sees for "What is 47 plus 38?" (answer 85)
    "right, worked": Reply(WORKED, True, 40),
    "right, brief": Reply("The answer is 85.", True, 6),
    "right, running on": Reply("85 and then 85", False, 32),
    "wrong, worked": Reply(WORKED.replace("85.", "86.").replace("8;", "9;"), True, 40),
    "wrong, brief": Reply("86", True, 3),
    "wrong, running on": Reply("I think 86", False, 32),
}


def test_the_labeler_prefers_right_shown_work_on_multi_digit_questions():
    scores = {k: truth_score(r, "85", show_work=True) for k, r in REPLIES.items()}
    assert scores == {"right, worked": 4, "right, brief": 3, "right, running on": 2,
                      "wrong, worked": 1, "wrong, brief": 1, "wrong, running on": 0}
    record = {"prompt": "What is 47 plus 38?", "answer": "85", "show_work": True}
    responses, ranking = rank(list(REPLIES.values()), record)
    assert [responses[i].text for i in ranking][:2] == [WORKED, "The answer is 85."]


def test_without_the_mark_the_labeler_ranks_as_before():
    """Prompts the world does not mark (one-digit questions, the default world, users'
    prompt files): right beats wrong, then brief and ended, as before."""
    before = {k: 2 * is_correct(r.text, "85") + int(r.ended and r.tokens <= 16)
              for k, r in REPLIES.items()}
    assert {k: truth_score(r, "85") for k, r in REPLIES.items()} == before
    assert {k: record_score(r, {"answer": "85"}) for k, r in REPLIES.items()} == before
    responses, ranking = rank(list(REPLIES.values()), "85")
    assert responses[ranking[0]].text == "The answer is 85."


def test_the_labeler_ranks_conversation_without_numbers_first():
    replies = [Reply("The answer is 12.", True, 6), Reply("I am well, thank you.", True, 8),
               Reply("I am well and", False, 32)]
    assert [talk_score(r) for r in replies] == [1, 3, 2]
    responses, ranking = rank(replies, {"prompt": "Hello, how are you?", "kind": "talk"})
    assert responses[ranking[0]].text == "I am well, thank you."


def test_rl_prompts_mix_in_conversation_and_hold_some_out(chatterbot, tmp_path):
    convs = CONVS + [["Hello, how are you?", "Very well."], ["Do you like tea?", "I do."],
                     ["How many legs has a cat?", "Four."], ["Is 7 lucky?", "Maybe."],
                     ["Tell me about the sea", "It is wide."]]
    chatterbot(convs)
    world = World(chat_prompt_share=0.25)
    counts = write_default_demos(world, tmp_path, n_arithmetic=100, n_questions=20,
                                 n_prompts=200)
    prompts = load_questions(tmp_path / "prompts.jsonl", require_answer=False)
    talk = [p for p in prompts if "answer" not in p]
    assert len(prompts) == 200 and len(talk) == 50 and all(p["kind"] == "talk" for p in talk)
    assert {p["prompt"] for p in talk} == {"Hello", "How are you?", "What is AI?",
                                           "Do you like tea?", "Tell me about the sea"}
    assert any("answer" not in p for p in prompts[:40])  # shuffled in, not appended
    held = [json.loads(x)["prompt"] for x in (tmp_path / "talk.jsonl").read_text().splitlines()]
    assert held == TALK_PROMPTS and counts["talk.jsonl"] == len(TALK_PROMPTS)
    demos = (tmp_path / "train.jsonl").read_text() + (tmp_path / "val.jsonl").read_text()
    assert "Hello, how are you?" not in demos and "Do you like tea?" in demos
    assert not any(re.search(r"\d", p) for p in TALK_PROMPTS)


def test_the_report_says_how_often_each_model_shows_its_work():
    from gptsmith.report import story

    rows = {m: {"accuracy": 0.3, "end_rate": 1.0, "work_rate": w}
            for m, w in [("sft", 0.25), ("ppo", 0.5)]}
    lines = story({"eval": {"numbers": {"models": rows}}})
    assert any("shown work" in x and "SFT 25%" in x and "PPO 50%" in x for x in lines)
    assert any("through worked steps" in x for x in lines)
    assert not any("by kind" in x for x in lines)  # no accuracy per kind recorded
    rows["ppo"]["by_kind"] = {"one-digit": 0.9, "two-digit": 0.75}
    rows["ppo"]["sampled_by_kind"] = {"one-digit": 0.5, "two-digit": 0.25}
    lines = story({"eval": {"numbers": {"models": rows}}})
    assert any("Held-out questions by kind, greedy / sampled: two-digit sums and differences: "
               "PPO 75% / 25%; one-digit: PPO 90% / 50%" in x for x in lines)
    rows["ppo"]["by_kind"]["two-digit times"] = 0.6  # products, where the world has them
    lines = story({"eval": {"numbers": {"models": rows}}})
    assert any("PPO 75% / 25%; two-digit products: PPO 60% / -; one-digit: PPO 90% / 50%" in x
               for x in lines)


def test_the_default_corpus_reads_the_world_it_is_given(monkeypatch):
    import gptsmith.data.fetch as fetch
    from gptsmith.data.corpus import read_corpus

    monkeypatch.setattr(fetch, "shakespeare_texts", lambda: [("play", "To be.\n\n" * 400)])
    world = World(max_operand=99, worked_share=1.0, arithmetic_share=0.5)
    worked = [d for d in read_corpus("default", world=world) if d.source == "world"]
    assert any("carry" in d.text for d in worked)
    plain = [d for d in read_corpus("default") if d.source == "world"]
    assert not any("carry" in d.text for d in plain)


def test_labeling_a_mix_of_sums_and_conversation(tiny_run, tmp_path):
    """Conversational prompts (no answer) are ranked too, and the rankings file reads as
    comparisons for the reward model."""
    from gptsmith.data.comparisons import read_comparisons
    from gptsmith.engine import Sampling
    from gptsmith.label import label

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in
                               [{"prompt": "What is 47 plus 38?", "answer": "85",
                                 "show_work": True},
                                *({"prompt": p, "kind": "talk"} for p in TALK_PROMPTS[:8])]))
    stats = label(str(tiny_run), str(prompts), str(tmp_path / "r.jsonl"), k=4,
                  s=Sampling(max_tokens=5, temperature=1.0, seed=0))
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert stats["prompts"] == 9 and rows
    assert all(("answer" in r) == (r["prompt"] == "What is 47 plus 38?") for r in rows)
    groups, _ = read_comparisons(tmp_path / "r.jsonl")
    assert len(groups) == len(rows)


def test_eval_scores_each_kind_of_question_and_how_often_work_is_shown():
    from gptsmith.chat import Reply
    from gptsmith.evaluate import _by_kind, question_kind, work_rate

    def q(text, answer, fact=None):
        rec = {"messages": [{"role": "user", "content": text}], "answer": answer}
        return {**rec, "fact": fact} if fact else rec

    qs = [q("What is 3 plus 4?", "7", [3, "plus", 4]), q("What is 47 plus 38?", "85"),
          q("What is 17 times 4?", "68", [17, "times", 4]), q("Add 12 and 5.", "17")]
    assert [question_kind(x) for x in qs] == ["one-digit", "two-digit", "two-digit times",
                                              "two-digit"]
    replies = [Reply(t, True, 5) for t in
               ["7.", "7 + 8 = 15, write 5 carry 1; 4 + 3 + 1 = 8; so 85.", "70.", "18."]]
    assert _by_kind(qs, replies, 1) == {"one-digit": 1.0, "two-digit": 0.5,
                                        "two-digit times": 0.0}
    assert work_rate(replies) == 0.25


def test_a_questions_file_from_elsewhere_loads_with_numbers_for_answers(tmp_path):
    from gptsmith.errors import GptsmithError

    path = tmp_path / "outside.jsonl"
    path.write_text('{"prompt": "What is 47 + 38?", "answer": 85}\n'
                    '{"prompt": "What is 3 - 5?", "answer": -2}\n')
    qs = load_questions(path)
    assert [q["answer"] for q in qs] == ["85", "-2"]
    assert [question_kind(q) for q in qs] == ["two-digit", "one-digit"]
    assert is_correct("So the answer is 85.", qs[0]["answer"])
    for bad in ("85.0", "true", "[85]"):  # a whole number, not one that may have been rounded
        path.write_text('{"prompt": "1 + 1", "answer": 2}\n'
                        + json.dumps({"prompt": "Hi"})[:-1] + f', "answer": {bad}}}\n')
        with pytest.raises(GptsmithError, match="outside.jsonl:2: field 'answer' must be"):
            load_questions(path)


def test_the_data_commands_take_a_world_file_and_name_a_bad_one(tmp_path, capsys):
    import dataclasses
    import json

    from gptsmith.cli import main
    from gptsmith.data.world import World

    world = tmp_path / "world.json"
    world.write_text(json.dumps(dataclasses.asdict(World(max_operand=99, worked_share=0.4))))
    tok = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--world", str(world), "--vocab-size", "300",
                 "--max-bytes", "200000", "--out", str(tok)]) == 0
    text = tok.read_text()
    assert main(["tokenizer", "train", "--corpus", str(tok), "--world", str(world),
                 "--out", str(tmp_path / "t2.json")]) == 2
    assert "only the default corpus has a world" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for argv in (["tokenizer", "train", "--out", str(tmp_path / "t3.json")],
                 ["data", "prepare", "--tokenizer", str(tok), "--out", str(tmp_path / "d")],
                 ["data", "demos", "--out", str(tmp_path / "demos")]):
        assert main([*argv, "--world", str(bad)]) == 2
        assert f"--world {bad}: not a world.json" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("t2.json", "t3.json", "d", "demos"))
    assert tok.read_text() == text


def test_the_report_shows_each_models_replies_to_17_times_24_and_two_digit_questions(
        tiny_run, tmp_path):
    from gptsmith.pipeline import SEED_QUESTION, TWO_DIGIT_SHOWN, evaluate_phases
    from gptsmith.report import write_report

    qs = [{"prompt": "What is 3 plus 4?", "answer": "7", "fact": [3, "plus", 4]},
          *({"prompt": f"What is {a} plus 38?", "answer": str(a + 38), "fact": [a, "plus", 38]}
            for a in range(40, 48))]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))
    evaluate_phases([tiny_run, tiny_run], str(path), 0, 0, tmp_path, max_tokens=4)
    shown = json.loads((tmp_path / "answers.json").read_text())["two_digit"]
    assert [r["prompt"] for r in shown] == [SEED_QUESTION[0]] + [
        q["prompt"] for q in qs[1:1 + TWO_DIGIT_SHOWN]]
    assert all(len(r["replies"]) == 2 for r in shown)
    html = write_report(tmp_path, []).read_text()
    assert "Worked out or answered at once" in html and "What is 17 times 24?" in html
    path.write_text(json.dumps(qs[0]) + "\n")  # no two-digit question: no such table
    evaluate_phases([tiny_run], str(path), 0, 0, tmp_path, max_tokens=4)
    assert "two_digit" not in json.loads((tmp_path / "answers.json").read_text())


def test_data_demos_writes_as_many_arithmetic_demonstrations_as_the_world_says(
        chatterbot, tmp_path):
    from gptsmith.cli import main

    chatterbot(CONVS)
    world = tmp_path / "world.json"
    World(max_operand=99, worked_share=0.4, demo_arithmetic=60, demo_worked_share=1.0,
          question_small_share=0.0).save(world)

    def arithmetic(out):
        rows = [json.loads(x)["messages"] for name in ("train.jsonl", "val.jsonl")
                for x in (out / name).read_text().splitlines()]
        talk = [default_demos._conversation(c)["messages"] for c in CONVS]
        return [m[1]["content"] for m in rows if m not in talk]

    assert main(["data", "demos", "--world", str(world), "--out", str(tmp_path / "a")]) == 0
    replies = arithmetic(tmp_path / "a")
    assert len(replies) == 60 and sum(shows_work(r) for r in replies) > 15
    questions = load_questions(tmp_path / "a" / "questions.jsonl")
    sums = [q for q in questions if q["fact"][1] != "times"]  # times stays within 0..10
    assert sum(question_kind(q) == "one-digit" for q in sums) < 0.05 * len(sums)  # not half
    assert main(["data", "demos", "--world", str(world), "--arithmetic", "7",
                 "--out", str(tmp_path / "b")]) == 0
    assert len(arithmetic(tmp_path / "b")) == 7
