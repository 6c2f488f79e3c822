"""Range checks of settings (model configurations, hyper-parameters): a value out of range is
an error that names the setting, the range and the value, raised before anything is built or
written, not a crash (or a silent misbehaviour) steps later."""

from __future__ import annotations

import math

# Rule -> test; the rule is also the message's wording. NaN fails every test.
RULES = {
    "positive": lambda v: v > 0,  # inf passes (max_grad_norm: inf means no clipping)
    "positive and finite": lambda v: 0 < v < math.inf,
    ">= 0": lambda v: v >= 0,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
}


def check_range(settings, rule: str, *names: str) -> None:
    """Each attribute `names` of `settings` satisfies `rule` (a key of RULES) or is None (a
    default filled in later); else ValueError("<name> must be <rule>, got <value>")."""
    test = RULES[rule]
    for name in names:
        value = getattr(settings, name)
        if value is not None and not test(value):
            raise ValueError(f"{name} must be {rule}, got {value}")
