"""Argument checks that several layers share, each written once; every error names its argument.

Python counts `True` as the int 1, so a flag passed where a count belongs would slip through an
`isinstance(x, int)` test: these refuse bools wherever an integer or a number is meant.
"""

import numbers
from collections.abc import Mapping, Sequence


def is_int(value) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number (int or float), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value, *, none: bool = False) -> None:
    """ValueError naming `name` unless `value` is an int of at least 1 (or None where `none`)."""
    if not (value is None and none) and not (is_int(value) and value >= 1):
        raise ValueError(f"{name} must be a positive int (at least 1), got {value!r}")


def token_ids(name: str, value) -> tuple[int, ...] | None:
    """One id or several (any sequence of ints) as a tuple; None stays None (not given)."""
    if value is None:
        return None
    ids = (value,) if is_int(value) else value
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence) or not all(map(is_int, ids)):
        raise TypeError(f"{name} must be an int or a list of ints, got {value!r}")
    return tuple(int(i) for i in ids)


def check_checkpoint_tensors(
    tensors: Mapping[str, object],
    shapes: Mapping[str, tuple[int, ...]],
    origin: Mapping[str, list[str]] | None,
    unknown_hint: str,
) -> None:
    """ValueError for a checkpoint tensor (FMS name) the model has no place for, or one whose
    shape differs from `shapes`; `origin` names the file each came from, for the message."""
    unknown = sorted(k for k in tensors if k not in shapes)
    if unknown:
        raise ValueError(
            f"checkpoint tensors with no place in the model (FMS names): {unknown}; {unknown_hint}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != shapes[name]:
            where = f" (from {origin[name]})" if origin and name in origin else ""
            raise ValueError(
                f"shape mismatch for {name}: the model expects {shapes[name]}, the checkpoint "
                f"has {tuple(tensor.shape)}{where}"
            )


__all__ = ["check_checkpoint_tensors", "check_positive_int", "is_int", "is_number", "token_ids"]
