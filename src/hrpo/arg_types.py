"""The argparse ``type=`` functions of the command line: a bad value fails at parse time with the flag named
("hrpo CMD: error: argument --flag: ...", exit 2)."""

from __future__ import annotations

import argparse
import math


def int_at_least(minimum: int):
    """An argparse ``type=`` for integers >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def temperature_value(text: str) -> float:
    """An argparse ``type=`` for a sampling temperature: a finite number > 0 (0 is not greedy decoding here)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0 (for greedy decoding pass --greedy instead of "
                                         "--temperature)")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def top_p_value(text: str) -> float:
    """An argparse ``type=`` for a nucleus top-p in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value
