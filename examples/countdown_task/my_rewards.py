"""A reward function of your own: ``fn(completion: str, example: dict) -> float``.

    hrpo train ... --reward accuracy --reward examples/countdown_task/my_rewards.py:length_penalty:-0.01

The weight after the last colon (-0.01) turns the length into a penalty; the advantages use the weighted sum of
all rewards, and each is logged as rewards/<name>/mean and rewards/<name>/std.
"""


def length_penalty(completion: str, example: dict) -> float:
    """The completion's length in words (give it a negative weight to prefer short answers)."""
    return float(len(completion.split()))
