"""Compiled greedy generation: bucketed shapes, a static KV cache, three graphs per bucket.

    gen = Generator(model)                      # torch.compile(fullgraph=True) by default
    gen.generate([ids_with_placeholder], features, max_new_tokens=128)

Three compiled regions, each one graph with no breaks:

* `embed`: encoder, projector and merge (`GraniteSpeech.embed_audio_and_text`);
* `prefill`: the LLM over the prompt embeddings, writing a preallocated KV cache;
* `decode`: one token for every row, reading and writing the same cache in place.

Shapes come from a `BucketPolicy`, not from the request, so a stream of requests of any audio
length, prompt length and batch size compiles a small, known number of graphs. Padding never
changes a result: padded frames are masked in the encoder (frame mask), padded prompt slots and
padded batch rows are masked in the LLM (`key_valid`), so bucketing only costs compute.

The cache is static (gpt-fast style): per layer a (B, kvheads, L, head_dim) key and value tensor,
written with `index_copy_` at `cache_position`, attended over its whole length with a mask. The
decode step therefore has the same shapes at every step, which is what CUDA graphs
(`mode="reduce-overhead"`) need; FMS's default cache grows by `torch.cat` and changes shape
every step.

Feature extraction (decoding files, resampling, the mel spectrogram) stays outside the graphs:
it runs once per clip on the host, its input length is the raw audio's, and its output is
what the buckets pad.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fms.modules.attention import register_attention_op

from granite_fms.features import AudioFeatures
from granite_fms.granite_speech import GraniteSpeech

STATIC_ATTENTION = "granite_fms_static"


def _round_up(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n; beyond the largest, the next multiple of the largest."""
    for bucket in buckets:
        if n <= bucket:
            return bucket
    top = buckets[-1]
    return -(-n // top) * top


@dataclass(frozen=True)
class BucketPolicy:
    """Padded shapes for the compiled graphs.

    audio_frames: encoder frames (50 per second of audio). The defaults are whole blocks of
        the encoder's 200-frame attention context: 4, 8, 16 and 32 s, so 0-30 s audio uses at
        most 4 buckets and padding at most doubles the encoder's work. Longer audio is never
        truncated: it takes the next multiple of the largest bucket (64 s, 96 s, ...), one more
        graph each.
    prompt_tokens: prompt length after placeholder expansion (about 10 tokens per second
        of audio plus the text); beyond the largest, multiples of it.
    batch: rows; a batch is padded with masked rows to the next bucket (beyond: multiples).
    cache_tokens: the static KV cache holds `prompt bucket + max_new_tokens` rounded up to a
        multiple of this, so a few decode graphs serve all requests.
    """

    audio_frames: tuple[int, ...] = (200, 400, 800, 1600)
    prompt_tokens: tuple[int, ...] = (64, 128, 256, 512)
    batch: tuple[int, ...] = (1, 2, 4)
    cache_tokens: int = 256

    def __post_init__(self):
        for name in ("audio_frames", "prompt_tokens", "batch"):
            buckets = getattr(self, name)
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError(f"{name} buckets must be increasing positive ints, got {buckets}")
        if self.cache_tokens < 1:
            raise ValueError(f"cache_tokens must be positive, got {self.cache_tokens}")

    def frames(self, n: int) -> int:
        return _round_up(n, self.audio_frames)

    def tokens(self, n: int) -> int:
        return _round_up(n, self.prompt_tokens)

    def rows(self, n: int) -> int:
        return _round_up(n, self.batch)

    def cache_len(self, prompt_bucket: int, max_new_tokens: int) -> int:
        return -(-(prompt_bucket + max_new_tokens) // self.cache_tokens) * self.cache_tokens


# ----- static KV cache as an FMS attention op -----------------------------------------------


def _static_store(
    keys: torch.Tensor,
    values: torch.Tensor,
    key_cache: torch.Tensor | None,
    value_cache: torch.Tensor | None,
    cache_position: torch.Tensor,
    **attn_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write the new keys/values (B, q, kvH, D) into the (B, kvH, L, D) cache at cache_position."""
    if key_cache is None or value_cache is None:
        raise ValueError(f"attention {STATIC_ATTENTION!r} needs a preallocated cache")
    key_cache.index_copy_(2, cache_position, keys.transpose(1, 2))
    value_cache.index_copy_(2, cache_position, values.transpose(1, 2))
    return key_cache, value_cache, key_cache, value_cache


def _static_compute(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    nheads: int,
    kvheads: int,
    p_dropout: float,
    scale_factor: float | None,
    cache_position: torch.Tensor,
    key_valid: torch.Tensor,
    **attn_kwargs,
) -> torch.Tensor:
    """Attend each query slot to the valid cache slots at or before it (and to itself)."""
    slots = torch.arange(key_cache.shape[2], device=key_cache.device)
    causal = slots[None, :] <= cache_position[:, None]
    own = slots[None, :] == cache_position[:, None]  # keeps fully padded rows finite
    mask = (causal & key_valid[:, None, :]) | own  # (B, q, L)
    attn = F.scaled_dot_product_attention(
        query.transpose(1, 2),
        key_cache,
        value_cache,
        attn_mask=mask.unsqueeze(1),
        dropout_p=p_dropout,
        scale=scale_factor,
        enable_gqa=nheads != kvheads,
    )
    return attn.transpose(1, 2).contiguous()


register_attention_op(STATIC_ATTENTION, _static_store, _static_compute)


def allocate_cache(
    model: GraniteSpeech, batch: int, length: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed (key, value) tensors of shape (batch, kvheads, length, head_dim) per LLM layer.

    Marked as static addresses: CUDA graphs read and write them in place without copies.
    """
    cfg = model.config.text_config
    weight = model.language_model.base_model.embedding.weight
    shape = (batch, cfg.kvheads, length, cfg.head_dim)
    cache = []
    for _ in range(cfg.nlayers):
        pair = tuple(torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in "kv")
        for t in pair:
            torch._dynamo.mark_static_address(t)
        cache.append(pair)
    return cache


# ----- the three regions (pure functions of tensors; these are what gets compiled) ----------


def _prefill(
    model: GraniteSpeech,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    cache: list,
    cache_position: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Fill the cache from the prompt; logits of the last position (B, vocab)."""
    logits, _ = model.language_model(
        embeds,
        position_ids=position_ids,
        past_key_value_states=cache,
        use_cache=True,
        last_n_tokens=1,
        attn_name=STATIC_ATTENTION,
        cache_position=cache_position,
        key_valid=key_valid,
    )
    return logits[:, -1]


def _decode(
    model: GraniteSpeech,
    token_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache: list,
    cache_position: torch.Tensor,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """One step for every row: token_ids (B, 1) -> logits (B, vocab); the cache grows in place."""
    embeds = model.language_model.base_model.embedding(token_ids)
    return _prefill(model, embeds, position_ids, cache, cache_position, key_valid)


@dataclass
class Prepared:
    """A request padded to its buckets: everything the three regions take."""

    rows: int  # real rows; the rest are padding
    input_ids: torch.Tensor  # (B, S) left-padded with 0
    position_ids: torch.Tensor  # (B, S)
    key_valid: torch.Tensor  # (B, L) False on left padding and padded rows
    cache: list
    features: torch.Tensor | None  # (B, F, 160)
    frame_mask: torch.Tensor | None  # (B, F)

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]


class Generator:
    """Greedy generation with the audio path, prefill and decode step each one compiled graph.

    compile: False runs the same bucketed static-cache code eagerly (for comparisons).
    backend / mode: passed to `torch.compile`; `mode="reduce-overhead"` captures the decode
        step in CUDA graphs on a GPU (the default when the model is on CUDA).
    """

    def __init__(
        self,
        model: GraniteSpeech,
        policy: BucketPolicy | None = None,
        *,
        compile: bool = True,
        backend: str | Callable = "inductor",
        mode: str | None = None,
    ):
        self.model = model.eval()
        self.policy = policy or BucketPolicy()
        if mode is None and self.device.type == "cuda" and backend == "inductor":
            mode = "reduce-overhead"
        self.mode = mode if compile else None
        self._caches: dict[tuple[int, int], list] = {}

        # Each region is one code object with a graph per bucket; dynamo's default limit (8)
        # would silently fall back to eager past 8 buckets. The largest region (embed) has a
        # graph per (audio, prompt, batch) bucket; the factor 4 leaves room for the buckets
        # past the largest ones (longer audio, more rows) and for several cache lengths.
        policy = self.policy
        limit = 4 * len(policy.audio_frames) * len(policy.prompt_tokens) * len(policy.batch)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)

        def region(fn: Callable, region_mode: str | None = None) -> Callable:
            if not compile:
                return fn
            return torch.compile(
                fn, fullgraph=True, dynamic=False, backend=backend, mode=region_mode
            )

        self.embed = region(model.embed_audio_and_text)
        self.prefill = region(lambda *args: _prefill(model, *args))
        self.decode = region(lambda *args: _decode(model, *args), self.mode)

    @property
    def device(self) -> torch.device:
        return self.model.language_model.base_model.embedding.weight.device

    def prepare(
        self,
        input_ids: Sequence[torch.Tensor],
        features: AudioFeatures | None = None,
        max_new_tokens: int = 128,
    ) -> Prepared:
        """Pad prompts (placeholders already expanded) and features to their buckets.

        Checks placeholder counts against the audio on the host, before anything is compiled.
        """
        if not input_ids:
            raise ValueError("no prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        rows = len(input_ids)
        if features is not None and features.input_features.shape[0] != rows:
            raise ValueError(f"{rows} prompts for {features.input_features.shape[0]} audio clips")
        batch = self.policy.rows(rows)
        seq = self.policy.tokens(max(len(ids) for ids in input_ids))
        device = self.device
        ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        valid = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        for i, row in enumerate(input_ids):
            ids[i, seq - len(row) :] = torch.as_tensor(row, device=device)
            valid[i, seq - len(row) :] = True
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        length = self.policy.cache_len(seq, max_new_tokens)
        key_valid = F.pad(valid, (0, length - seq), value=True)
        key_valid[rows:] = False

        feats = mask = None
        if features is not None:
            n = features.input_features.shape[1]
            frames = self.policy.frames(n)
            feats = torch.zeros(batch, frames, features.input_features.shape[2], device=device)
            mask = torch.zeros(batch, frames, dtype=torch.bool, device=device)
            feats[:rows, :n] = features.input_features.to(device)
            mask[:rows, :n] = features.input_features_mask.to(device)
            self.model.check_audio_inputs(ids, feats, mask)
        elif (ids == self.model.config.audio_token_index).any():
            raise ValueError("the prompts hold audio placeholders but no audio was given")
        key = (batch, length)
        if key not in self._caches:  # reused: a new address would make CUDA graphs re-record
            self._caches[key] = allocate_cache(self.model, batch, length)
        cache = self._caches[key]
        return Prepared(rows, ids, position_ids, key_valid, cache, feats, mask)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Sequence[torch.Tensor],
        features: AudioFeatures | None = None,
        *,
        max_new_tokens: int = 128,
        eos_token_id: int | None = None,
    ) -> list[list[int]]:
        """Greedy new tokens per row, up to (not including) the first EOS."""
        p = self.prepare(input_ids, features, max_new_tokens)
        self.model.start_request(p.features is not None)
        if p.features is None:
            embeds = self.model.language_model.base_model.embedding(p.input_ids)
        else:
            embeds = self.embed(p.input_ids, p.features, p.frame_mask)
        seq = p.prompt_len
        logits = self.prefill(
            embeds, p.position_ids, p.cache, torch.arange(seq, device=self.device), p.key_valid
        )
        position = p.position_ids[:, -1:]
        tokens = [logits.argmax(-1, keepdim=True)]
        done = torch.zeros(p.rows, dtype=torch.bool, device=self.device)
        for step in range(1, max_new_tokens):
            if eos_token_id is not None:
                done |= tokens[-1][: p.rows, 0] == eos_token_id
                if step % 8 == 0 and bool(done.all()):  # a host sync, every 8 steps only
                    break
            position = position + 1
            slot = torch.full((1,), seq + step - 1, device=self.device)
            logits = self.decode(tokens[-1], position, p.cache, slot, p.key_valid)
            tokens.append(logits.argmax(-1, keepdim=True))
        out = torch.cat(tokens, dim=1)[: p.rows].tolist()
        return [until_eos(row, eos_token_id) for row in out]


def until_eos(ids: list[int], eos_token_id: int | None) -> list[int]:
    """The ids before the first EOS (all of them if there is none or no EOS id)."""
    return ids[: ids.index(eos_token_id)] if eos_token_id in ids else ids


__all__ = [
    "BucketPolicy",
    "Generator",
    "Prepared",
    "STATIC_ATTENTION",
    "allocate_cache",
    "until_eos",
]
