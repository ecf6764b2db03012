"""The reasoning formats: rendering prompts and parsing completions, on literal strings."""

import pytest

from mathgrpo.data.formats import PRESETS, get_format, last_boxed, parse_completion, render_prompt
from mathgrpo.model.tiny import build_tokenizer

R = get_format("reasoning")


def test_default_format_round_trip():
    """A solution written by Format.solution parses back into its parts and is well formed."""
    text = R.solution("3+4=7", "7")
    assert text == "[REASONING]3+4=7[ANSWER]7"
    parsed = parse_completion(text, R)
    assert (parsed.reasoning, parsed.answer, parsed.well_formed) == ("3+4=7", "7", True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name):
    """Each preset reads back what it writes."""
    fmt = PRESETS[name]
    parsed = parse_completion(fmt.solution("We add 2 and 2 to get 4.", "4"), fmt)
    assert parsed.answer == "4" and parsed.well_formed


@pytest.mark.parametrize(
    "text, answer, well_formed",
    [
        ("[REASONING]x[ANSWER]5", "5", True),
        ("[ANSWER]5", "5", False),  # no reasoning
        ("[REASONING]x[ANSWER]5[ANSWER]6", "6", False),  # two answers: last one read, not well formed
        ("[REASONING]x", None, False),  # no answer marker
        ("[REASONING][ANSWER]5", "5", False),  # empty reasoning
        ("hello [REASONING]x[ANSWER]5", "5", False),  # text before the reasoning marker
        ("[REASONING]x[ANSWER]  ", None, False),  # empty answer
    ],
)
def test_reasoning_parse_cases(text, answer, well_formed):
    """Malformed completions still yield the last answer where there is one, and are flagged."""
    parsed = parse_completion(text, R)
    assert parsed.answer == answer and parsed.well_formed is well_formed


def test_think_needs_closed_answer():
    """An unclosed <answer> is read but not well formed; text after </answer> breaks the form."""
    think = get_format("think")
    assert parse_completion("<think>a</think><answer>3", think).well_formed is False
    assert parse_completion("<think>a</think><answer>3</answer> more", think).well_formed is False
    assert parse_completion("<think>a</think><answer>3</answer>\n", think).well_formed is True


def test_boxed_reads_last_balanced_box():
    """The boxed preset takes the last \\boxed{} with nested braces intact."""
    boxed = get_format("boxed")
    parsed = parse_completion("so \\boxed{1} no wait \\boxed{\\frac{1}{2}}.", boxed)
    assert parsed.answer == "\\frac{1}{2}" and parsed.well_formed
    assert last_boxed("\\boxed{unclosed") is None


def test_render_prompt_templates():
    """bare is the question alone; plain writes the system prompt; chat needs a template."""
    assert render_prompt("07+28=", R, template="bare") == "07+28="
    plain = render_prompt("What is 2+2?", R, template="plain")
    assert plain.startswith(R.system_prompt) and plain.endswith("Problem: What is 2+2?\nSolution: ")
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("q", R, tokenizer=build_tokenizer(), template="chat")
    assert render_prompt("q", R, tokenizer=build_tokenizer(), template="auto") == render_prompt("q", R, template="plain")


def test_render_prompt_uses_chat_template():
    """A tokenizer with a chat template keeps it: system and user turns rendered through it."""
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    text = render_prompt("2+2?", R, tokenizer=tok)
    assert text == f"<system>{R.system_prompt}<user>2+2?<assistant>"


def test_system_prompt_override():
    """format.system_prompt replaces the preset's."""
    assert get_format("reasoning", "Be brief.").system_prompt == "Be brief."
    with pytest.raises(ValueError, match="unknown format preset"):
        get_format("nope")


def test_instruction_after_the_question_in_every_template():
    """format.instruction=user: no system part; the instruction follows each question, shots included."""
    fmt = get_format("boxed", instruction="user")
    line = fmt.system_prompt
    assert render_prompt("Q?", fmt, template="plain") == f"Problem: Q?\n{line}\nSolution: "
    assert render_prompt("Q?", fmt, template="bare") == f"Q?\n{line}"
    shots = render_prompt("Q?", fmt, template="plain", shots=[("A?", "S")])
    assert shots.startswith(f"Problem: A?\n{line}\nSolution: S\n") and shots.count(line) == 2
    assert get_format("boxed").instruction == "system"
    with pytest.raises(ValueError, match="use system or user"):
        get_format("boxed", instruction="assistant")
