"""Tricky answers per family, checked through each task's reward (the path training uses)."""

import threading
from fractions import Fraction

import pytest

from hrpo import tasks
from hrpo.rewards import (choice_letter, final_number, format_number, last_boxed, math_answer_text, math_equal,
                          normalize_qa, qa_exact_match, qa_f1, short_answer)

# --------------------------------------------------------------------------------------- GSM8K (numbers)
# (completion, gold, expected reward)
GSM8K_CASES = [
    ("So she has 1000 apples. #### 1,000", "1000", 1.0),  # reference bug: "1,000" -> "0"
    ("#### 1,234", "1234", 1.0),  # reference bug: "1,234" -> "234"
    ("The total is #### $1,234.50", "1234.5", 1.0),
    ("#### $18.00", "18", 1.0),
    ("#### 18 dollars", "18", 1.0),
    ("#### 3/4", "0.75", 1.0),
    ("#### \\frac{3}{4}", "0.75", 1.0),
    ("#### 0.50", "0.5", 1.0),
    ("#### 2 1/2 hours", "2.5", 1.0),
    ("#### 16 - 3 - 4 = 9 eggs", "9", 1.0),
    ("#### 25%", "25", 1.0),
    ("#### -7", "-7", 1.0),
    ("#### \u22127", "-7", 1.0),  # unicode minus
    ("#### The answer is 42.", "42", 1.0),
    ("#### \\boxed{1,000,000}", "1000000", 1.0),
    ("#### 10.", "10", 1.0),
    ("#### 1,000", "100", 0.0),
    ("#### 17", "18", 0.0),
    ("The answer is 18.", "18", 0.0),  # no marker
    ("#### 18 #### 18", "18", 0.0),  # marker twice
    ("#### eighteen", "18", 0.0),  # no number
    ("#### 0.7", "0.75", 0.0),
]


@pytest.mark.parametrize("completion,gold,expected", GSM8K_CASES)
def test_gsm8k_reward_table(completion, gold, expected):
    task = tasks.get("gsm8k")
    assert task.reward(completion, {"question": "q", "gold": gold}) == expected


def test_final_number_canonical_values():
    assert final_number("$1,234.50") == Fraction(2469, 2)
    assert final_number("1,0000") == 1  # not a valid thousands group: only the leading digit group counts
    assert final_number("x = 12, y = 3") == 3
    assert format_number(Fraction(5, 2)) == "2.5" and format_number(Fraction(1, 3)) == "1/3"
    assert final_number("no digits") is None


# --------------------------------------------------------------------------------------- MATH (LaTeX)
MATH_CASES = [
    ("#### $\\frac{3}{4}$", "\\frac{3}{4}", 1.0),
    ("#### \\frac{3}{4}", "\\frac{3}{4}", 1.0),  # reference bug: unboxed LaTeX reduced to "4"
    ("#### \\frac{3}{4}", "4", 0.0),
    ("#### 1/2", "\\frac{1}{2}", 1.0),  # reference bug: "1/2" -> "2"
    ("#### 1/2", "2", 0.0),
    ("#### \\dfrac{3}{4}", "\\frac34", 1.0),
    ("#### 0.75", "\\frac{3}{4}", 1.0),
    ("#### \\boxed{2\\sqrt{3}}", "2\\sqrt{3}", 1.0),
    ("#### $\\sqrt{12}$", "2\\sqrt{3}", 1.0),  # equivalence via math-verify
    ("#### $x = 4$", "4", 1.0),
    ("#### $(-2, 2)$", "(-2, 2)", 1.0),
    ("#### $[-2, 2]$", "(-2, 2)", 0.0),  # closed vs open interval
    ("#### \\text{(C)}", "\\text{(C)}", 1.0),  # reference bug: becomes ""
    ("#### (C)", "\\text{(C)}", 1.0),
    ("#### 10{,}000", "10000", 1.0),
    ("#### 90^\\circ", "90", 1.0),
    ("#### 5\\text{ cm}", "5", 1.0),
    ("#### $\\frac{\\sqrt{2}}{2}$", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("#### $(x+1)^2$", "x^2+2x+1", 1.0),
    ("#### $\\left( 3, \\frac{\\pi}{2} \\right)$", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    ("#### $2\\sqrt{3}$", "2", 0.0),
    ("The answer is $\\boxed{4}$", "4", 0.0),  # no marker
]


@pytest.mark.parametrize("completion,gold,expected", MATH_CASES)
def test_math_reward_table(completion, gold, expected):
    task = tasks.get("math")
    assert task.reward(completion, {"question": "q", "gold": gold}) == expected


def test_math_answer_text_and_boxed():
    assert last_boxed("so \\boxed{\\frac{1}{2}} and then \\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed 5") == "5"
    assert last_boxed("\\boxed{unbalanced") is None
    assert math_answer_text("The answer is $x=3$.") == "x=3"
    assert math_answer_text("**7**") == "7"


def test_math_equal_works_outside_the_main_thread():
    # math-verify's time limit uses SIGALRM (main thread only); elsewhere it must still run, without a limit
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=math_equal("\\sqrt{12}", "2\\sqrt{3}")))
    thread.start()
    thread.join(30)
    assert out["r"] is True


# --------------------------------------------------------------------------------------- multiple choice
CHOICES = ["DNA", "a protein", "a lipid", "RNA"]
MC_CASES = [
    ("#### B", 1.0),
    ("#### (B)", 1.0),
    ("#### b", 1.0),
    ("#### B. a protein", 1.0),  # reference bug: the article 'a' -> "A"
    ("#### B) a protein", 1.0),
    ("#### a protein", 1.0),  # the option text itself
    ("#### A protein", 1.0),
    ("#### I think the answer is B", 1.0),  # reference bug: the pronoun 'I'
    ("#### The answer is (B).", 1.0),
    ("#### Answer: B", 1.0),
    ("#### **B**", 1.0),
    ("#### I believe B", 1.0),
    ("#### the answer is a protein.", 1.0),
    ("#### A", 0.0),
    ("#### A or B", 0.0),  # ambiguous
    ("#### E", 0.0),  # not an option of a 4-choice question
    ("#### a lipid", 0.0),
    ("I pick B", 0.0),  # no marker
]


@pytest.mark.parametrize("completion,expected", MC_CASES)
def test_multiple_choice_reward_table(completion, expected):
    task = tasks.get("mmlu_stem")
    example = {"question": "q", "choices": CHOICES, "answer_index": 1, "gold": "B", "subject": "bio"}
    assert task.reward(completion, example) == expected


def test_choice_letter_without_choices():
    assert choice_letter("I think it is D") == "D"
    assert choice_letter("A cat") is None
    assert choice_letter("") is None


# --------------------------------------------------------------------------------------- QA
GOLDS = ["The Beatles", "Beatles"]
QA_CASES = [
    ("#### The Beatles", 1.0),
    ("#### beatles", 1.0),
    ("#### the beatles.", 1.0),
    ("#### **The Beatles**", 1.0),
    ("#### The answer is The Beatles.", 1.0),
    ("#### \\boxed{The Beatles}", 1.0),
    ("#### The Beatles\nThey were a band from Liverpool.", 1.0),
    ("#### THE   BEATLES!", 1.0),
    ("#### The Rolling Stones", 0.0),
    ("#### Beatles band", 0.0),
    ("#### The Beatles #### The Beatles", 0.0),
    ("The Beatles", 0.0),
]


@pytest.mark.parametrize("completion,expected", QA_CASES)
def test_qa_reward_table(completion, expected):
    task = tasks.get("hotpotqa")
    assert task.reward(completion, {"question": "q", "gold": GOLDS, "contexts": []}) == expected


def test_qa_normalisation_and_f1():
    assert normalize_qa("The  U.S.A.!") == "usa"
    assert normalize_qa("an apple a day") == "apple day"
    assert qa_exact_match("U.S.A", ["usa"]) and not qa_exact_match(None, ["x"])
    assert qa_f1("Beatles band", GOLDS) == pytest.approx(2 / 3)
    assert qa_f1("Rolling Stones", GOLDS) == 0.0
    assert qa_f1("the Beatles", GOLDS) == 1.0
    assert short_answer("Answer: Paris.\nMore text") == "Paris"


# --------------------------------------------------------------------------------------- format rule
def test_single_marker_rule_is_an_option():
    strict, lenient = tasks.get("gsm8k"), tasks.get("gsm8k", require_single_marker=False)
    example = {"question": "q", "gold": "18"}
    completion = "#### Heading\nwork... #### 18"
    assert strict.reward(completion, example) == 0.0
    assert lenient.reward(completion, example) == 1.0
    think = tasks.get("gsm8k", prompt_format="think")
    assert think.marker == "</think>"
    assert think.reward("<think>9 * 2 = 18</think> 18", example) == 1.0
    assert think.reward("<think>#### 18</think> The answer is 18.", example) == 1.0  # '####' is just text here
    assert think.reward("<think>a</think> 17 </think> 18", example) == 0.0
