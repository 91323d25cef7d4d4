"""How to generate: one frozen value that every layer passes on, checked when it is built.

    options = GenerationOptions(max_new_tokens=128, num_beams=4)
    pipe.generate(clip, generation=options)       # or pipe.generate(clip, num_beams=4)
    generator.generate(ids, features, options)    # or generator.generate(ids, num_beams=4)

Keyword arguments given beside an options value replace its fields (`with_changes`, as
whisper's `decode(model, mel, options, **kwargs)`), so the checks run once, here.
"""

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from granite_fms.audio.longform import TOKENS_PER_30S, LongFormOptions
from granite_fms.checks import check_positive_int, is_int, token_ids


@dataclass(frozen=True)
class GenerationOptions:
    """The new tokens of each request: how many at most, how they are chosen, what ends them."""

    # New tokens per request at most: one budget for all, or one per request. None: 200, the
    # model cards' value for a clip of up to 30 s; in long form, each window's own budget of
    # 200 per 30 s of it (`granite_fms.audio.longform.budget`).
    max_new_tokens: int | tuple[int, ...] | None = None
    # 1: greedy; K > 1: Hugging Face's beam search with K beams (length_penalty=1.0,
    # early_stopping=False).
    num_beams: int = 1
    # The id(s) that end a row, kept as a tuple. None: the pipeline's (the checkpoint's
    # generation_config.json, else its tokenizer's EOS; a bare Generator has none). (): no stop.
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self):
        budgets = self.max_new_tokens
        if isinstance(budgets, Sequence) and not isinstance(budgets, str | bytes):
            if not budgets:
                raise ValueError("max_new_tokens must be an int or one per request, got []")
            for budget in budgets:
                check_positive_int("max_new_tokens", budget)
            object.__setattr__(self, "max_new_tokens", tuple(int(b) for b in budgets))
        else:
            check_positive_int("max_new_tokens", budgets, none=True)
        check_positive_int("num_beams", self.num_beams)
        object.__setattr__(self, "eos_token_id", token_ids("eos_token_id", self.eos_token_id))

    def with_eos(self, eos_token_id: tuple[int, ...]) -> "GenerationOptions":
        """These options, with `eos_token_id` where they name no EOS ids."""
        return self if self.eos_token_id is not None else replace(self, eos_token_id=eos_token_id)

    def budgets(self, requests: int) -> list[int]:
        """The budget of each of `requests` requests."""
        budgets = self.max_new_tokens
        if budgets is None or is_int(budgets):
            return [TOKENS_PER_30S if budgets is None else int(budgets)] * requests
        if len(budgets) != requests:
            raise ValueError(f"{len(budgets)} max_new_tokens values for {requests} requests")
        return list(budgets)


def with_changes(changes: dict, *options):
    """Options values with keyword `changes` applied to the fields they name (each field named
    by one of them); a TypeError lists the fields for a name that is none of them."""
    owner = {f.name: i for i, value in enumerate(options) for f in fields(value)}
    unknown = sorted(set(changes) - set(owner))
    if unknown:
        raise TypeError(f"unknown options {unknown}: the options are {sorted(owner)}")
    return [
        replace(value, **{k: v for k, v in changes.items() if owner[k] == i})
        for i, value in enumerate(options)
    ]


def long_form_options(
    changes: dict,
    long_form: LongFormOptions | None = None,
    generation: GenerationOptions | None = None,
) -> tuple[LongFormOptions, GenerationOptions]:
    """The options of a long-form request (defaults for those not given), keyword `changes`
    applied to the fields they name."""
    return tuple(
        with_changes(changes, long_form or LongFormOptions(), generation or GenerationOptions())
    )


__all__ = ["GenerationOptions", "long_form_options", "with_changes"]
