"""Answer extraction and checking shared by tasks and named rewards (pure string functions, no model code).

Four families, each written to avoid a parser bug of the reference (hrpo-reference.md section 8/12):
  * numbers (:mod:`.numbers`, GSM8K): thousands separators, currency, units, percentages, decimals, fractions,
    mixed numbers;
  * LaTeX math (:mod:`.latex`, MATH): light string normalisation, exact numbers, then mathematical equivalence
    with math-verify under a time limit; unboxed LaTeX is never reduced to its last digit;
  * multiple-choice letters (:mod:`.choice`): the article 'a' and the pronoun 'I' are not read as options;
  * short QA answers (:mod:`.qa`): SQuAD normalisation, exact match and token F1.
:mod:`.common` finds where an answer is (after the marker, in a ``\\boxed{}``, after 'answer is').
"""

from .choice import LETTERS, choice_letter
from .common import (after_answer_phrase, answer_clause, before_special_token, boxed_answer, boxed_group,
                     boxed_spans, last_boxed, marker_count_ok, text_after_marker)
from .latex import Answers, answer_items, math_answer_text, math_equal, math_unmarked_text, normalize_latex
from .numbers import final_number, format_number, numbers_equal, parse_number, unmarked_number
from .qa import normalize_qa, qa_exact_match, qa_f1, short_answer

__all__ = ["LETTERS", "Answers", "after_answer_phrase", "answer_clause", "answer_items", "before_special_token",
           "boxed_answer", "boxed_group", "boxed_spans", "choice_letter", "final_number", "format_number",
           "last_boxed", "marker_count_ok", "math_answer_text", "math_equal", "math_unmarked_text",
           "normalize_latex", "normalize_qa", "numbers_equal", "parse_number", "qa_exact_match", "qa_f1",
           "short_answer", "text_after_marker", "unmarked_number"]
