"""The reasoning format: how a prompt is rendered and how a completion is read back.

Default: the model writes `[REASONING]`, its step-by-step work, `[ANSWER]`, the final answer.
Presets change the markers (`think`, `unsloth`) or put the answer in `\\boxed{}` (`boxed`).
Training and evaluation both go through `render_prompt` and `parse_completion`, so what the reward
reads is exactly what the benchmark reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

# Completions longer than this are parsed on their tail only: a runaway completion must not make
# parsing slow (the answer, when there is one, is near the end).
MAX_PARSE_CHARS = 20_000


@dataclass(frozen=True)
class Format:
    """One reasoning format: its markers and the system prompt that teaches them."""

    name: str
    reasoning_start: str
    reasoning_end: str  # "" when the answer marker itself ends the reasoning
    answer_start: str
    answer_end: str  # "" when the answer runs to the end of the completion
    system_prompt: str
    boxed: bool = False  # the final answer is the last \boxed{...}
    instruction: str = "system"  # where system_prompt goes: "system" (its own message) or "user" (after the question)

    def solution(self, reasoning: str, answer: str) -> str:
        """A worked solution written in this format (the warm-up's target text)."""
        reasoning = reasoning.strip()
        if self.boxed:
            return f"{reasoning}\nThe final answer is $\\boxed{{{answer.strip()}}}$."
        return (
            f"{self.reasoning_start}{reasoning}{self.reasoning_end}"
            f"{self.answer_start}{answer.strip()}{self.answer_end}"
        )

    @property
    def markers(self) -> tuple:
        """The literal tags of this format, in order (empty ones left out)."""
        tags = (self.reasoning_start, self.reasoning_end, self.answer_start, self.answer_end)
        return tuple(t for t in tags if t)


PRESETS = {
    "reasoning": Format(
        name="reasoning",
        reasoning_start="[REASONING]",
        reasoning_end="",
        answer_start="[ANSWER]",
        answer_end="",
        system_prompt=(
            "You are given a problem. Think about it step by step and show your work after [REASONING]. "
            "Then write [ANSWER] followed by the final answer alone."
        ),
    ),
    "think": Format(
        name="think",
        reasoning_start="<think>",
        reasoning_end="</think>",
        answer_start="<answer>",
        answer_end="</answer>",
        system_prompt=(
            "You are given a problem. Think about it step by step between <think> and </think>. "
            "Then give the final answer alone between <answer> and </answer>."
        ),
    ),
    "unsloth": Format(
        name="unsloth",
        reasoning_start="<start_working_out>",
        reasoning_end="<end_working_out>",
        answer_start="<SOLUTION>",
        answer_end="</SOLUTION>",
        system_prompt=(
            "You are given a problem.\nThink about the problem and provide your working out.\n"
            "Place it between <start_working_out> and <end_working_out>.\n"
            "Then, provide your solution between <SOLUTION></SOLUTION>"
        ),
    ),
    "boxed": Format(
        name="boxed",
        reasoning_start="",
        reasoning_end="",
        answer_start="\\boxed{",
        answer_end="}",
        system_prompt="Please reason step by step, and put your final answer within \\boxed{}.",
        boxed=True,
    ),
}


def get_format(preset: str = "reasoning", system_prompt: Optional[str] = None, instruction: str = "system") -> Format:
    """The preset by name, optionally with its system prompt replaced and its instruction moved after the question."""
    if preset not in PRESETS:
        raise ValueError(f"unknown format preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if instruction not in ("system", "user"):
        raise ValueError(f"unknown instruction placement {instruction!r}; use system or user")
    fmt = PRESETS[preset]
    if system_prompt is not None or instruction != fmt.instruction:
        fmt = Format(**{**fmt.__dict__, "system_prompt": fmt.system_prompt if system_prompt is None else system_prompt,
                        "instruction": instruction})
    return fmt


# Chat templates of models that publish a prompt of their own, and the settings that give that prompt.
# DeepSeekMath-Instruct and -RL: the chat_template of their tokenizer_config.json (User:/Assistant:, bos first);
# their card asks for "{question}\nPlease reason step by step, and put your final answer within \boxed{}."
# in the user turn and no system prompt ("the system prompt is not compatible with this version of our models").
DEEPSEEK_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}{% elif message['role'] == 'system' %}"
    "{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'Assistant:' }}{% endif %}"
)
def _same_template(text: str) -> str:
    """A chat template compared as Jinja reads it: `\\n` inside its string literals is the newline it stands for."""
    return text.replace("\\n", "\n").strip()


MODEL_PROMPTS = {
    _same_template(DEEPSEEK_CHAT_TEMPLATE): {"name": "DeepSeekMath's (User:/Assistant: chat template)",
                                             "preset": "boxed", "instruction": "user"},
}


def model_prompt(tokenizer: Any) -> Optional[dict]:
    """The prompt settings a model's card asks for, known by its tokenizer's chat template; None when unknown."""
    template = getattr(tokenizer, "chat_template", None)
    return MODEL_PROMPTS.get(_same_template(template)) if isinstance(template, str) else None


@dataclass(frozen=True)
class Parsed:
    """What a completion says: its reasoning, its final answer (None if it gave none), and form."""

    reasoning: Optional[str]
    answer: Optional[str]
    well_formed: bool


def closing_brace(text: str, open_idx: int) -> Optional[int]:
    """Index of the brace that closes the one at `open_idx`, or None when it never closes."""
    depth = 0
    for j in range(open_idx, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, or None."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    start = text.find("{", idx) if idx >= 0 else -1
    end = closing_brace(text, start) if start >= 0 else None
    return None if end is None else text[start + 1 : end]


def _parse_boxed(text: str, fmt: Format) -> Parsed:
    answer = last_boxed(text)
    if answer is None:
        return Parsed(reasoning=text.strip() or None, answer=None, well_formed=False)
    reasoning = text[: text.rfind("\\boxed")].strip()
    return Parsed(reasoning=reasoning or None, answer=answer.strip() or None, well_formed=bool(reasoning))


def parse_completion(text: str, fmt: Format) -> Parsed:
    """Split a completion into reasoning and final answer, and say whether it follows the format.

    Well formed: each marker exactly once, in order, reasoning before the answer, nothing but
    white space after the end of the answer. The answer is read from the last answer marker even
    when the form is off, so a sloppy but correct completion can still be graded.
    """
    text = text[-MAX_PARSE_CHARS:]
    if fmt.boxed:
        return _parse_boxed(text, fmt)
    a_idx = text.rfind(fmt.answer_start)
    if a_idx < 0:
        return Parsed(reasoning=None, answer=None, well_formed=False)
    answer = text[a_idx + len(fmt.answer_start) :]
    closed = True
    if fmt.answer_end:
        end = answer.find(fmt.answer_end)
        closed = end >= 0
        tail = answer[end + len(fmt.answer_end) :] if closed else ""
        answer = answer[:end] if closed else answer
    else:
        tail = ""
    head = text[:a_idx]
    r_idx = head.find(fmt.reasoning_start)
    reasoning = head[r_idx + len(fmt.reasoning_start) :] if r_idx >= 0 else None
    if reasoning is not None and fmt.reasoning_end:
        r_end = reasoning.rfind(fmt.reasoning_end)
        reasoning = reasoning[:r_end] if r_end >= 0 else reasoning
    counts_ok = all(text.count(tag) == 1 for tag in fmt.markers)
    well_formed = bool(
        counts_ok
        and closed
        and reasoning is not None
        and reasoning.strip()
        and answer.strip()
        and not tail.strip()
        and not head[:r_idx].strip()
    )
    return Parsed(
        reasoning=reasoning.strip() if reasoning is not None else None,
        answer=answer.strip() or None,
        well_formed=well_formed,
    )


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template of its own."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolved_template(tokenizer: Any, template: str) -> str:
    """The layout `format.template` stands for: `auto` is `chat` when the tokenizer has a chat template, else `plain`."""
    if template != "auto":
        return template
    return "chat" if tokenizer is not None and has_chat_template(tokenizer) else "plain"


def prompts_for(problems: list, fmt: Format, tokenizer: Any, template: str, shots: Optional[list] = None) -> list:
    """The prompt text of each problem (few-shot examples in front when given): what training, held-out
    evaluation and `mathgrpo eval` all feed the model."""
    return [render_prompt(p.question, fmt, tokenizer, template, shots) for p in problems]


def render_prompt(
    question: str,
    fmt: Format,
    tokenizer: Any = None,
    template: str = "auto",
    shots: Optional[list] = None,
) -> str:
    """The text fed to the model for one question: system prompt and user turn; the model writes the markers.

    `template`: `auto` uses the tokenizer's chat template when it has one, else `plain`;
    `chat` insists on the template; `plain` writes system and question as text; `bare` is the
    question alone (tiny models with a small alphabet). `shots` is a list of (question, solution)
    pairs shown before the question (few-shot evaluation of base models).
    """
    shots = shots or []
    if fmt.instruction == "user":  # the instruction follows each question; there is no system message
        question = f"{question}\n{fmt.system_prompt}"
        shots = [(f"{q}\n{fmt.system_prompt}", s) for q, s in shots]
    template = resolved_template(tokenizer, template)
    if template == "bare":
        return "".join(f"{q}{s}\n" for q, s in shots) + question
    if template == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise ValueError("format.template=chat needs a tokenizer with a chat template; use auto or plain")
        messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.instruction == "system" else []
        for q, s in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": s}]
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if template == "plain":
        parts = [fmt.system_prompt, ""] if fmt.instruction == "system" else []
        for q, s in shots:
            parts += [f"Problem: {q}", f"Solution: {s}", ""]
        parts += [f"Problem: {question}", "Solution: "]
        return "\n".join(parts)
    raise ValueError(f"unknown prompt template {template!r}; use auto, chat, plain or bare")
