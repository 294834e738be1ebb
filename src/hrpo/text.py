"""Prompt encoding (chat template, left padding, left truncation) and completion decoding."""

from __future__ import annotations

import torch


def chat_prompt_ids(tokenizer, messages: list[dict], max_length: int | None = None) -> list[int]:
    """Ids of one conversation with the generation prompt (plain "role: content" lines when the tokenizer has
    no chat template); only the last ``max_length`` tokens are kept when given (left truncation)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    else:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return ids[-max_length:] if max_length else ids


def encode_prompts(tokenizer, conversations: list[list[dict]], max_length: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-template each conversation (with the generation prompt) and left-pad.

    Returns ``(ids (B, P) long, mask (B, P) long)``. Prompts longer than ``max_length`` keep their last
    ``max_length`` tokens.
    """
    rows = [chat_prompt_ids(tokenizer, messages, max_length) for messages in conversations]
    return left_pad(rows, tokenizer.pad_token_id, device)


def encode_text_prompt(tokenizer, text: str, chat: bool = True) -> list[int]:
    """Token ids of one user message (chat template applied when ``chat``)."""
    if chat:
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": text}])
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Lists of ids -> left-padded ``(ids, mask)`` tensors (B, max_len)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
    """Text of each completion's real tokens (special tokens such as EOS dropped)."""
    out = []
    for ids, mask in zip(completion_ids.tolist(), completion_mask.tolist()):
        out.append(tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True))
    return out
