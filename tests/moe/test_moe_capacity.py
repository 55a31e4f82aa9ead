"""compute_capacity vs the official formula written by hand (vmoe.moe.compute_capacity)."""
import itertools
import math

import pytest

from sparsevision.moe import compute_capacity


def hand(num_tokens, num_experts, cf, mode, multiple_of):
    raw = num_tokens * cf / num_experts
    c = math.ceil(raw) if mode == "ceil" else round(raw)
    if c < 1:
        return None
    if multiple_of:
        c = multiple_of * math.ceil(c / multiple_of)
    return c


CASES = list(itertools.product([1, 3, 7, 16, 197, 1576, 3152], [1, 2, 8, 32], [0.01, 0.5, 1.0, 1.05, 1.25, 2.0],
                               ["ceil", "round"], [None, 1, 4, 8]))


@pytest.mark.parametrize("num_tokens, num_experts, cf, mode, multiple_of", CASES)
def test_matches_hand_formula(num_tokens, num_experts, cf, mode, multiple_of):
    expected = hand(num_tokens, num_experts, cf, mode, multiple_of)
    if expected is None:
        with pytest.raises(ValueError, match="capacity"):
            compute_capacity(num_tokens, num_experts, cf, mode, multiple_of)
    else:
        assert compute_capacity(num_tokens, num_experts, cf, mode, multiple_of) == expected


def test_known_values():
    # V-MoE B/32 at 224px: group of 8 images x 50 tokens, k=2, E=32, C=1.05 -> ceil(26.25)=27 -> 28.
    assert compute_capacity(400 * 2, 32, 1.05) == 28
    assert compute_capacity(10, 4, 1.0, "round", None) == 2  # round(2.5) == 2, banker's rounding as Python/official
    assert compute_capacity(14, 4, 1.0, "round", None) == 4  # round(3.5) == 4
    assert compute_capacity(10, 4, 1.0, "ceil", None) == 3
    assert compute_capacity(5, 4, 1.0) == 4  # 2 padded up to a multiple of 4
    assert compute_capacity(4, 4, 1.0, multiple_of=0) == 1  # 0 = no padding, as the official `if multiple_of`


def test_too_small_capacity_checked_before_padding():
    # ceil would give 1 but round gives 0: error even though multiple_of=4 would pad to 4 (official order).
    with pytest.raises(ValueError, match=r"num_tokens=1.*num_experts=8.*capacity_factor=1.0"):
        compute_capacity(1, 8, 1.0, "round", 4)
    assert compute_capacity(1, 8, 1.0, "ceil", 4) == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_tokens=8, num_experts=0, capacity_factor=1.0), "num_experts"),
    (dict(num_tokens=8, num_experts=2, capacity_factor=1.0, ceil_or_round="floor"), "ceil_or_round"),
    (dict(num_tokens=8, num_experts=2, capacity_factor=1.0, multiple_of=-4), "multiple_of"),
    (dict(num_tokens=0, num_experts=2, capacity_factor=1.0), "capacity"),
    (dict(num_tokens=8, num_experts=2, capacity_factor=-1.0), "capacity"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_capacity(**kwargs)
