"""Worked solutions: cleaning a source's solution text into plain reasoning, and the warm-up target.

Sources write their solutions with markup of their own: GSM8K puts calculator annotations
(`<<16-3-4=9>>`) in the text and the answer after `####`; MATH wraps the final answer in `\\boxed{}`
inside the last sentence and draws figures in Asymptote code (`[asy]...[/asy]`); OpenMathReasoning
wraps its thinking in `<think>` tags. `clean_solution` removes that markup (drawing code whole: it is
not reasoning) and keeps the words, so the reasoning reads naturally inside any reasoning format; the
gold answer is written once, by the format, after the reasoning.
"""

from __future__ import annotations

import re
from typing import Optional

from .formats import Format, closing_brace, parse_completion
from .problem import Problem

# Only `<<expr=value>>` (GSM8K's calculator calls), so a stray `<<` in other text survives.
_CALCULATOR = re.compile(r"<<[^<>\n]*=[^<>\n]*>>")
_THINK_TAG = re.compile(r"</?think>")
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ASY = re.compile(r"(\s*)\[asy\].*?\[/asy\](\s*)", re.DOTALL)


class GoldError(ValueError):
    """The gold answer cannot be read from a row (e.g. a GSM8K answer without `####`)."""


def split_gsm8k(text: str) -> tuple:
    """(worked solution, gold answer) from a GSM8K answer field `... #### 1,234`.

    Gold is the text after the last `####`, commas removed and stripped; the solution is the text
    before it with calculator annotations removed. Raises GoldError when there is no gold.
    """
    head, sep, gold = text.rpartition("####")
    if not sep:
        raise GoldError("answer has no '#### <answer>' line (GSM8K style)")
    gold = gold.replace(",", "").strip()
    if not gold:
        raise GoldError("nothing after '####' in the answer")
    return strip_calculator(head).strip(), gold


def strip_calculator(text: str) -> str:
    """Text without GSM8K calculator annotations: `2+1=<<2+1=3>>3 bolts` -> `2+1=3 bolts`."""
    return _CALCULATOR.sub("", text)


def strip_drawings(text: str) -> str:
    """Text without Asymptote figures (`[asy]...[/asy]`); a figure between paragraphs leaves one paragraph break."""
    return _ASY.sub(lambda m: "\n\n" if "\n" in m.group(1) + m.group(2) else " ", text)


def unwrap_boxed(text: str) -> str:
    """Text with every `\\boxed{X}` / `\\fbox{X}` replaced by `X` (braces balanced)."""
    out, i = [], 0
    while True:
        match = _BOX_OPEN.search(text, i)
        if match is None:
            return "".join(out) + text[i:]
        end = closing_brace(text, match.end() - 1)
        if end is None:  # unbalanced: leave the rest as it is
            return "".join(out) + text[i:]
        out.append(text[i : match.start()])
        out.append(text[match.end() : end])
        i = end + 1


def clean_solution(text: Optional[str]) -> Optional[str]:
    """A source's solution as plain reasoning (markup above removed), or None if nothing is left."""
    if text is None:
        return None
    text = unwrap_boxed(strip_drawings(_THINK_TAG.sub("", strip_calculator(text)))).strip()
    return text or None


def sft_text(problem: Problem, fmt: Format) -> Optional[str]:
    """The warm-up target for `problem`: its worked solution and gold answer written in `fmt`.

    None when the problem has no worked solution, or when the text would not parse back as a
    well-formed completion with the gold answer (a solution containing the format's own markers):
    the warm-up must never teach a form that the reward and the benchmark read differently.
    """
    if not problem.solution:
        return None
    text = fmt.solution(problem.solution, problem.answer)
    parsed = parse_completion(text, fmt)
    return text if parsed.well_formed and parsed.answer == problem.answer.strip() else None
