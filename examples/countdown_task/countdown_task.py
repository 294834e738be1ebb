"""A task of your own, as a plain class with hrpo's Task protocol (see hrpo.tasks.TaskProtocol).

Countdown with two numbers: "Use 7 and 5 once each, with + or -, to make 12." The answer is an expression after
the '####' marker ("#### 7 + 5"); it is right when it uses exactly the two numbers and evaluates to the target.

    hrpo train --task examples/countdown_task/countdown_task.py:CountdownTask

No hrpo import is needed: hrpo calls the methods below. (Subclassing hrpo.tasks.Task would give you ``score``,
``load`` and the marker rule from four small methods instead.)
"""

import random
import re

SYSTEM_PROMPT = "Combine the numbers to reach the target. Write the expression after ####."
SHOTS = (  # two worked examples carry the format, which a 135M model does not follow zero-shot
    ("Use 14 and 23 once each, with + or -, to make 37.", "14 + 23 = 37 #### 14 + 23"),
    ("Use 52 and 18 once each, with + or -, to make 34.", "52 - 18 = 34 #### 52 - 18"),
)
EXPRESSION = re.compile(r"^\s*(\d+)\s*([+-])\s*(\d+)\s*(?:=\s*-?\d+\s*)?$")  # "7 + 5" (or "7 + 5 = 12")
SPLIT_SEED = 7  # decides which problems are test problems (never the run's seed)


class CountdownTask:
    name = "countdown2"
    marker = "####"
    procedural = True  # hrpo calls examples(n, seed) for training data

    def __init__(self, prompt_format: str = "hash", data_path: str | None = None, hi: int = 30):
        if prompt_format != "hash":
            raise ValueError("this example task writes its prompt for the hash format only")
        if hi < 3:
            raise ValueError(f"hi={hi}: the numbers go from 1 to hi, which must be at least 3")
        self.hi = hi

    # ---------------------------------------------------------------- data
    def _problems(self, split: str) -> list[tuple[int, str, int]]:
        """The distinct problems (a, op, b), a > b, of ``split``: all of them shuffled by a fixed seed, the first
        quarter 'test' and the rest 'train', so training never sees a test problem, whatever the run's seed."""
        every = [(a, op, b) for a in range(2, self.hi + 1) for b in range(1, a) for op in "+-"]
        random.Random(SPLIT_SEED).shuffle(every)
        n_test = len(every) // 4
        return every[:n_test] if split == "test" else every[n_test:]

    @staticmethod
    def _example(a: int, op: str, b: int, swap: bool = False) -> dict:
        target = a + b if op == "+" else a - b
        first, second = (b, a) if swap else (a, b)
        return {"question": f"Use {first} and {second} once each, with + or -, to make {target}.",
                "numbers": [a, b], "target": target, "gold": f"{a} {op} {b}"}

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` training problems drawn for the run's ``seed`` (the numbers shown in either order)."""
        rng, pool = random.Random(seed), self._problems("train")
        return [self._example(*rng.choice(pool), swap=rng.random() < 0.5) for _ in range(n)]

    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        if split != "test":
            return self.examples(limit or 200, seed=0)
        return [self._example(*problem) for problem in self._problems("test")[:limit]]

    # ---------------------------------------------------------------- prompts and answers
    def messages(self, example: dict) -> list[dict]:
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for question, answer in SHOTS:
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": example["question"]}]

    def extract_answer(self, completion: str, example: dict | None = None) -> str | None:
        if self.marker not in completion:
            return None
        lines = completion.rsplit(self.marker, 1)[1].strip().splitlines()
        return lines[0].strip().rstrip(".") if lines else None

    def _correct(self, answer: str | None, example: dict) -> bool:
        m = EXPRESSION.match(answer or "")
        if not m:
            return False
        x, op, y = int(m[1]), m[2], int(m[3])
        value = x + y if op == "+" else x - y
        return sorted([x, y]) == sorted(example["numbers"]) and value == example["target"]

    def reward(self, completion: str, example: dict) -> float:
        """1.0 for a right expression after exactly one marker, else 0.0 (the reward named 'accuracy')."""
        if completion.count(self.marker) != 1:
            return 0.0
        return float(self._correct(self.extract_answer(completion), example))

    def score(self, completion: str, example: dict) -> dict:
        answer = self.extract_answer(completion)
        return {"answer": answer, "correct": self._correct(answer, example),
                "format_ok": completion.count(self.marker) == 1}
