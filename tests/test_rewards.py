"""Tricky answers per family, checked through each task's reward (the path training uses)."""

import re
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import pytest

from hrpo import tasks
from hrpo.scoring import (answer_clause, boxed_group, choice_letter, final_number, format_number, last_boxed,
                          math_answer_text, math_equal, math_unmarked_text, normalize_qa, qa_exact_match, qa_f1,
                          short_answer)

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


# the answer right after the marker, then more text: a check, an explanation, another equation
GSM8K_TEXT_AFTER_ANSWER = [
    ("Each box holds 12, so 3 boxes hold 36.\n#### 36 (check: 12 + 12 = 24 for two boxes)", "36", 1.0),
    ("#### 7\nShe had 4 + 3 = 7 pens, then 7 - 2 = 5 were left over.", "7", 1.0),
    ("#### 42. Check: 40 + 2 = 42", "42", 1.0),
    ("#### 18 because 3*6=18", "18", 1.0),
    ("#### 41\nCheck: 40 + 2 = 42", "42", 0.0),  # the check's result is not the answer
    ("#### 5\\frac{3}{4}", "5.75", 1.0),  # a LaTeX mixed number, not 53/4
    ("#### 5\\frac{3}{4}", "13.25", 0.0),
]


@pytest.mark.parametrize("completion,gold,expected", GSM8K_TEXT_AFTER_ANSWER)
def test_gsm8k_reads_the_answer_before_any_text_after_it(completion, gold, expected):
    assert tasks.get("gsm8k").reward(completion, {"question": "q", "gold": gold}) == expected


def test_answer_clause_stops_at_line_sentence_and_explanation():
    assert answer_clause("42. Check: 40 + 2 = 42") == "42"
    assert answer_clause("18 because 3*6=18") == "18"
    assert answer_clause("9, since 3 + 6 = 9") == "9"
    assert answer_clause("16 (check: 4 * 4)") == "16"
    assert answer_clause("3.5 m\nmore") == "3.5 m"
    assert answer_clause("$$\n\\frac{1}{2}\n$$\nDone.") == "$$\n\\frac{1}{2}\n$$"  # not cut inside math


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


MATH_RULE_CASES = [
    # the answer on the marker's line or first in its sentence; what follows is explanation
    ("#### 35\nThis uses $5 \\cdot 7$.", "35", 1.0),
    ("#### The answer is $\\frac{2}{7}$, since $p = 2$.", "\\frac{2}{7}", 1.0),
    ("#### Final Answer: The final answer is 81. I hope it is correct.", "81", 1.0),
    ("#### Final Answer: The smallest $k$ is 12.", "12", 1.0),
    ("#### so it is not 3 but 1,250.5", "1250.5", 1.0),
    # money and unit words
    ("#### $\\$14$", "\\$14", 1.0),
    ("#### The answer is $\\$14$.", "14", 1.0),
    ("#### 14 dollars", "\\$14", 1.0),
    ("#### 12 apples", "12", 1.0),
    ("#### 3\\frac{1}{3} feet", "\\frac{10}{3}", 1.0),
    # mixed numbers
    ("#### 3 2/5", "\\frac{17}{5}", 1.0),
    ("#### -3 2/5", "-\\frac{17}{5}", 1.0),
    ("#### 2\\frac{1}{3}", "\\frac{7}{3}", 1.0),
    ("#### 2\\frac{1}{3}", "\\frac{21}{3}", 0.0),
    ("#### 21/3", "2\\frac{1}{3}", 0.0),
    ("#### 5.75", "5\\frac{3}{4}", 1.0),
    # lists: a comma and a space separate items; a comma between digit groups is a thousands separator
    ("#### 4, 250", "4250", 0.0),
    ("#### 4250", "4, 250", 0.0),
    ("#### 4,250", "4250", 1.0),
    ("#### 4, 250", "4, 250", 1.0),
    ("#### 2, 7, 9", "7, 2, 9", 0.0),  # a plain list keeps its order
    ("#### \\boxed{7} and \\boxed{2}", "2, 7", 1.0),  # several boxes are a set of answers
    ("#### $\\{9, 2\\}$", "2, 9", 1.0),
    ("#### $(1, 4), (2, 3)$", "(2,3), (1,4)", 1.0),  # solutions (tuples) form a set
    # a decimal with many places is a rounded value; a short one is not
    ("#### 0.142857142857", "\\frac{1}{7}", 1.0),
    ("#### 0.14", "\\frac{1}{7}", 0.0),
    # only a variable's "x =" is dropped, not a number's
    ("#### $2a+b$", "5 = 2a+b", 0.0),
    ("#### $y_1 = 4$", "4", 1.0),
]


@pytest.mark.parametrize("completion,gold,expected", MATH_RULE_CASES)
def test_math_reward_rules(completion, gold, expected):
    assert tasks.get("math").reward(completion, {"question": "q", "gold": gold}) == expected


def test_boxed_group_keeps_boxes_of_one_answer():
    assert boxed_group("\\boxed{1}, \\boxed{2} \\quad \\text{or} \\quad \\boxed{3}") == ["1", "2", "3"]
    assert boxed_group("first \\boxed{1}. Then we get more.\nSo \\boxed{2}") == ["2"]
    assert boxed_group("\\boxed{1} is wrong, see \\boxed{2}") == ["2"]  # words other than and/or between
    assert math_answer_text("so $\\boxed{4}$ and $\\boxed{5}$") == "\\boxed{4}, \\boxed{5}"


def test_math_unmarked_completion_reads_its_last_answer():
    assert math_unmarked_text("We add them. Hence the probability is 3/8. <|im_start|>user\nNext: 5") == "3/8"
    assert math_unmarked_text("We get $x = 2$ and so the area is $12$.") == "12"
    assert math_unmarked_text("... \\boxed{5} ... Final Answer: The final answer is $7$.") == "7"
    scored = tasks.get("math500").score("so the sum is 10. I hope it is correct.", {"question": "q", "gold": "10"})
    assert scored["correct"] and not scored["format_ok"]


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
    ("#### B\nA is wrong because DNA is not a protein.", 1.0),  # the letter first, then other letters
    ("#### B, because A is DNA.", 1.0),
    ("#### b) a protein", 1.0),
    ("#### Answer: \uff22", 1.0),  # full-width letter
    ("#### A, B and D are all molecules", 0.0),  # several letters: no answer
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


def test_qa_f1_zeroes_yes_no_mismatches():
    assert qa_f1("no doubt", ["no"]) == 0.0  # HotpotQA's rule; SQuAD F1 would give 2/3
    assert qa_f1("yes", ["yes"]) == 1.0
    assert qa_f1("yes", ["no", "yes sir"]) == 0.0
    assert qa_f1("Beatles band", GOLDS) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------- shared suite
CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"


@pytest.mark.skipif(not CONFORMANCE.exists(), reason="../shared/conformance not present")
def test_shared_conformance_suite_scores_at_least_98_percent():
    run = subprocess.run([sys.executable, str(CONFORMANCE / "run_reward_cases.py")], capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    figure = re.search(r"^(\d+)/(\d+) reward cases scored right", run.stdout, re.MULTILINE)
    assert figure, run.stdout[-2000:] + run.stderr[-2000:]
    right, total = int(figure[1]), int(figure[2])
    assert right >= 0.98 * total, run.stdout[-4000:]


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
