"""Prompt templates and the parsing of answers: robust to what models add, never a placeholder."""

from __future__ import annotations

import math

import pytest

from saescope.prompts import parse, template
from saescope.prompts.parse import ParseError


@pytest.mark.parametrize(
    "answer",
    [
        "Explanation: dates in January",
        'Sure! Here is my answer.\n\n**Explanation:** "dates in January."',
        "The examples share a theme.\nExplanation:\n`dates in January`",
        "- Explanation: 'dates in January'",
        "dates in January",
        "### Explanation: dates in January\n",
    ],
)
def test_explanations_are_read_through_preambles_markdown_and_quotes(answer):
    assert parse.explanation(answer) == "dates in January"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("Let me think.\nThe examples are about many things.", "no 'Explanation:'"),
        ("Explanation:", "nothing after it"),
        ("Explanation: " + "word " * 60, "at most"),
        (
            "Well, it is really quite hard to say here, because the examples are all so very "
            "different from each other.",
            "20 words",
        ),
    ],
)
def test_unreadable_explanations_fail_with_a_reason(answer, why):
    with pytest.raises(ParseError, match=why):
        parse.explanation(answer)


def test_a_cut_answer_needs_its_label():
    assert parse.explanation("Explanation: dates\nand then", truncated=True) == "dates"
    with pytest.raises(ParseError, match="cut at the length limit"):
        parse.explanation("The feature fires on words about", truncated=True)


def test_lists_of_judgements():
    assert parse.binary_list("Answer: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse.binary_list("I think [0,0] ... final: [1, 1, 0]", 3) == [1, 1, 0]
    with pytest.raises(ParseError, match="lists of 2"):
        parse.binary_list("[1, 0]", 3)
    with pytest.raises(ParseError, match="outside"):
        parse.binary_list("[1, 2, 0]", 3)
    with pytest.raises(ParseError, match="no \\["):
        parse.binary_list("yes, no, yes", 3)
    assert parse.number_list("[0, 7.5, 10]", 3, 0, 10) == [0, 7.5, 10]
    assert parse.choice("The odd one is example 3.", 5) == 2
    with pytest.raises(ParseError):
        parse.choice("none of them", 5)
    with pytest.raises(ParseError):
        parse.choice("7", 5)


def test_probabilities_of_one_from_top_logprobs():
    lp = math.log
    steps = [
        {"[": 0.0},
        {"1": lp(0.8), "0": lp(0.2)},
        {",": 0.0},
        {" 0": lp(0.6), " 1": lp(0.3)},
        {"]": 0.0},
    ]
    p = parse.binary_probabilities(steps, 2)
    assert p == pytest.approx([0.8, 1 / 3])
    assert parse.binary_probabilities(steps, 3) is None  # only two digits were generated
    assert parse.binary_probabilities(None, 2) is None


def test_templates_are_package_data_with_a_stable_hash():
    t = template("detection")
    assert "{explanation}" in t.user and t.system
    assert len(t.sha256) == 64 and t.sha256 == template("detection").sha256
    msgs = t.messages(explanation="x {y}", examples="Example 1: a", n=1)
    assert msgs[0][0] == "system" and "x {y}" in msgs[1][1]
    with pytest.raises(Exception, match="no prompt template"):
        template("nope")


def test_yes_no_answers_and_their_probability():
    assert parse.yes_no("Yes.") == 1 and parse.yes_no("**no**, because") == 0
    with pytest.raises(ParseError, match="Yes or No"):
        parse.yes_no("Maybe")
    lp = math.log
    assert parse.yes_probability([{"Yes": lp(0.6), " no": lp(0.2), "No": lp(0.2)}]) == 0.6
    assert parse.yes_probability([{"Maybe": 0.0}]) is None
    assert parse.yes_probability(None) is None
