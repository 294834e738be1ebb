"""A test task whose reward varies within every group, so each step has a policy gradient."""


class LengthParityTask:
    name = "parity"
    marker = "####"
    procedural = True

    def __init__(self, **kwargs):
        pass

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        return [{"question": f"Count to {i % 7 + 2}.", "answer": ""} for i in range(n)]

    def messages(self, example: dict) -> list[dict]:
        return [{"role": "user", "content": example["question"]}]

    def extract_answer(self, completion: str):
        return completion

    def reward(self, completion: str, example: dict) -> float:
        return float(len(completion) % 2)


def register() -> None:
    from hrpo import tasks

    tasks.register("parity", LengthParityTask)


def tiny_train_args(model_dir, out_dir, steps=2) -> dict:
    """Config values for a fast run on a tiny model."""
    return {"model": str(model_dir), "task": "parity", "output_dir": str(out_dir), "max_steps": steps,
            "prompts_per_step": 2, "group_size": 4, "micro_batch_size": 3, "max_new_tokens": 6,
            "temperature": 1.0, "save_every": 2, "num_train_examples": 16}
