"""Reading the answers of the prompts in this package, robustly, or failing with a reason.

In: an LLM's answer text (and, for lists of 0/1, its per-token top log-probabilities).
Out: the parsed value, or `ParseError` with a reason that is recorded with the
feature (the raw answer kept beside it). Nothing here ever returns a placeholder
for an answer it could not read.

Tolerated: preambles ("Sure! Here is..."), markdown (`**Explanation:**`, code
fences, bullets), quotes around the phrase, a trailing period.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_LABEL = re.compile(r"^\W*explanation\W*:\s*(.*)$", re.IGNORECASE)
_MARKUP = re.compile(r"[*_`#>]+")
_LIST = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"-?\d+(?:\.\d+)?")
MAX_WORDS = 40  # a labelled explanation
MAX_BARE_WORDS = 15  # an answer without the label is taken only when it is this short


class ParseError(ValueError):
    """An answer that does not hold what the prompt asked for."""


def _clean(line: str) -> str:
    line = _MARKUP.sub("", line).strip()
    line = line.lstrip("-•").strip()
    while len(line) >= 2 and line[0] in "\"'“‘" and line[-1] in "\"'”’":
        line = line[1:-1].strip()
    return line.rstrip(".").strip()


def explanation(answer: str, truncated: bool = False) -> str:
    """The phrase after the last `Explanation:` label, or the whole answer when it is one
    short line (at most MAX_BARE_WORDS, as the prompt asks); `ParseError` otherwise.

    truncated: the answer was cut at the length limit, so without a label it is a
    phrase cut short, not an answer."""
    lines = [ln for ln in answer.strip().splitlines() if ln.strip()]
    if not lines:
        raise ParseError("empty answer")
    for i in range(len(lines) - 1, -1, -1):
        m = _LABEL.match(_MARKUP.sub("", lines[i]).strip())
        if m:
            text = _clean(m.group(1))
            if not text and i + 1 < len(lines):  # the label alone on its line
                text = _clean(lines[i + 1])
            if text:
                return _check_length(text)
            raise ParseError("an 'Explanation:' label with nothing after it")
    if truncated:
        raise ParseError("the answer was cut at the length limit before an 'Explanation:' line")
    if len(lines) == 1:
        text = _clean(lines[0])
        if len(text.split()) > MAX_BARE_WORDS:
            raise ParseError(
                f"no 'Explanation:' label, and the answer is {len(text.split())} words "
                f"(more than {MAX_BARE_WORDS})"
            )
        return _check_length(text)
    raise ParseError("no 'Explanation:' line in a multi-line answer")


def _check_length(text: str) -> str:
    if not text:
        raise ParseError("an empty explanation")
    if len(text.split()) > MAX_WORDS:
        raise ParseError(f"an explanation of {len(text.split())} words (at most {MAX_WORDS})")
    return text


def number_list(answer: str, n: int, lo: float, hi: float) -> list[float]:
    """The first bracketed list of exactly `n` numbers within [lo, hi] in the answer."""
    found = _LIST.findall(answer)
    if not found:
        raise ParseError("no [ ... ] list in the answer")
    for body in found:
        nums = [float(x) for x in _INT.findall(body)]
        if len(nums) == n:
            if all(lo <= x <= hi for x in nums):
                return nums
            raise ParseError(f"a value outside {lo:g}..{hi:g} in {body.strip()!r}")
    sizes = ", ".join(str(len(_INT.findall(b))) for b in found)
    raise ParseError(f"expected a list of {n} numbers, got lists of {sizes}")


def binary_list(answer: str, n: int) -> list[int]:
    """A list of n zeros and ones."""
    vals = number_list(answer, n, 0, 1)
    if any(v not in (0.0, 1.0) for v in vals):
        raise ParseError("values other than 0 and 1")
    return [int(v) for v in vals]


def choice(answer: str, n: int) -> int:
    """The 1-based example number an answer names (1..n), as 0-based."""
    nums = [int(float(x)) for x in _INT.findall(answer)]
    ok = [x for x in nums if 1 <= x <= n]
    if not ok:
        raise ParseError(f"no example number between 1 and {n} in the answer")
    return ok[0] - 1


def binary_probabilities(top_logprobs: list[dict[str, float]] | None, n: int) -> list[float] | None:
    """P(1) for each of the n 0/1 answers, from the top log-probabilities of the tokens
    the model chose (greedy: the most likely one at each step); None when the server
    gave no log-probabilities or they do not show n digits."""
    if not top_logprobs:
        return None
    probs: list[float] = []
    for step in top_logprobs:
        if not step:
            continue
        best = max(step, key=lambda t: step[t])
        if best.strip() not in ("0", "1"):
            continue
        p = _share(step, "1", "0", str.strip)
        probs.append(p if p is not None else float(best.strip() == "1"))
    return probs[:n] if len(probs) >= n else None


_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def yes_no(answer: str) -> int:
    """1 for an answer that starts with "yes", 0 for "no" (case and markup ignored)."""
    m = _YES_NO.match(answer.strip())
    if not m:
        raise ParseError("the answer does not start with Yes or No")
    return int(m.group(1).lower() == "yes")


def yes_probability(top_logprobs: list[dict[str, float]] | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the first answer token, from its top log-probabilities;
    None when there are none or neither word is among them."""
    if not top_logprobs or not top_logprobs[0]:
        return None
    return _share(top_logprobs[0], "yes", "no", lambda t: t.strip().lower())


def _share(step: dict[str, float], pos: str, neg: str, fold: Callable[[str], str]) -> float | None:
    """P(pos) / (P(pos) + P(neg)) among one step's top log-probabilities, summing the
    tokens that `fold` maps to each (" Yes" and "yes"); None when neither is there."""
    p = {pos: 0.0, neg: 0.0}
    for tok, lp in step.items():
        key = fold(tok)
        if key in p:
            p[key] += math.exp(lp)
    total = p[pos] + p[neg]
    return p[pos] / total if total > 0 else None
