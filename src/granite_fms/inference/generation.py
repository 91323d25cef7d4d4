"""Generation, greedy or beam search: bucketed shapes, a static KV cache, four compiled steps.

    gen = Generator(model, compile=CompileConfig())   # None (default): eager
    gen.generate([ids_with_placeholder], features, GenerationOptions(max_new_tokens=128))

Four steps, each one graph with no breaks when compiled (`granite_fms.inference.compile`):

* `encode`: encoder and projector (`GraniteSpeech.audio_embeddings`), on at most
  `BucketPolicy.audio_rows` clips at a time; the merge into the prompt's embeddings runs
  eagerly after it (a few small ops with no host sync);
* `prefill`: the LLM over the prompt embeddings, writing a preallocated KV cache;
* `decode`: one token for every row, reading and writing the same cache in place;
* `reorder`: beam search's gather of the cache rows its beams continue.

Shapes come from a `BucketPolicy`: prompts, batch rows and the cache are padded to buckets.
With symbolic shapes (the default `CompileConfig`) the rows, prompt length, cache length and
frame count are symbolic sizes, so every bucket runs the same graphs, whatever the audio
length, batch size, prompt length and search: one per step, and three for the audio path (a
lone clip within one encoder block, a lone clip over several, several clips; counted by
`tests/test_generation.py` and `experiments/census_generator.py`). With static shapes each
bucket compiles its own. Padding never changes a result:
padded frames are masked in the encoder (frame mask), padded prompt slots and padded batch
rows are masked in the LLM (`key_valid`), so bucketing only costs compute.

The cache is static (gpt-fast style): per layer a (B, kvheads, L, head_dim) key and value tensor,
written with `index_copy_` at `cache_position`, attended over its whole length with a mask. The
decode step therefore has the same shapes at every step, which is what CUDA graphs
(`mode="reduce-overhead"`, one capture per rows and cache-length bucket) need; FMS's default
cache grows by `torch.cat` and changes shape every step.

Feature extraction (decoding files, resampling, the mel spectrogram) stays outside the graphs:
it runs once per clip on the host, its input length is the raw audio's, and its output is
what the buckets pad.
"""

import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from fms.modules.attention import register_attention_op
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from granite_fms.audio.features import AudioFeatures
from granite_fms.audio.processor import check_prompt_ids
from granite_fms.checks import is_int
from granite_fms.inference.compile import (
    CompileConfig,
    Region,
    compile_blocks,
    save_artifact,
    saves_dynamo_output,
)
from granite_fms.inference.options import GenerationOptions, with_changes
from granite_fms.models.granite_speech import GraniteSpeech

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
    """Padded shapes: what a request is padded to before the compiled steps see it.

    With symbolic shapes the buckets bound the distinct shapes (each a CUDA-graph capture of
    the decode step on a GPU), not the graphs; with static shapes each is a graph.

    audio_frames: None (default): no audio buckets. Features are padded only to the batch's
        longest clip and the audio graph takes the frame count as a symbolic size (Dynamo
        still specialises a lone clip within one encoder block), no padding waste. A tuple:
        static buckets in encoder frames (50 per second of audio), e.g. whole
        200-frame encoder blocks (200, 400, 800, 1600: 4, 8, 16, 32 s), a graph per bucket;
        longer audio takes the next multiple of the largest bucket, never truncated.
        Compared by `experiments.bench_audio_buckets`.
    prompt_tokens: prompt length after placeholder expansion (about 10 tokens per second
        of audio plus the text); beyond the largest, multiples of it.
    batch: rows; a batch is padded with masked rows to the next bucket (beyond: multiples).
    cache_tokens: the static KV cache holds `prompt bucket + max_new_tokens` rounded up to a
        multiple of this, so a few cache lengths serve all requests.
    audio_rows: clips per call of the audio path (a batch runs in chunks): its cost is per
        clip, and on CPU a 16th clip makes PyTorch choose the depthwise convolution's kernel
        again, which a symbolic batch size turns into another graph.
    """

    audio_frames: tuple[int, ...] | None = None
    prompt_tokens: tuple[int, ...] = (64, 128, 256, 512)
    batch: tuple[int, ...] = (1, 2, 4)
    cache_tokens: int = 256
    audio_rows: int = 8

    def __post_init__(self):
        for name in ("audio_frames", "prompt_tokens", "batch"):
            buckets = getattr(self, name)
            if name == "audio_frames" and buckets is None:
                continue
            if not isinstance(buckets, tuple | list) or not all(map(is_int, buckets)):
                raise TypeError(f"{name} buckets must be a tuple of ints, got {buckets!r}")
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError(f"{name} buckets must be increasing positive ints, got {buckets}")
            object.__setattr__(self, name, tuple(buckets))  # frozen, hashable
        for name in ("cache_tokens", "audio_rows"):
            value = getattr(self, name)
            if not is_int(value):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")

    def frames(self, n: int) -> int:
        return n if self.audio_frames is None else _round_up(n, self.audio_frames)

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

    kvheads is the attention module's own count: under tensor parallel, this rank's heads.
    Marked as static addresses: CUDA graphs read and write them in place without copies.
    """
    cfg = model.config.text_config
    kvheads = model.language_model.base_model.layers[0].attn.kvheads
    shape = (batch, kvheads, length, cfg.head_dim)
    cache = []
    for _ in range(cfg.nlayers):
        pair = tuple(torch.zeros(shape, dtype=model.dtype, device=model.device) for _ in "kv")
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


def _reorder(cache: list, rows: torch.Tensor) -> None:
    """Beam search: LLM row i continues row `rows[i]`; the cache is reordered to match (a
    gather per layer, as HF's `reorder_cache`). Its own step, so greedy and beam search share
    the decode graph."""
    for keys, values in cache:
        keys.copy_(keys.index_select(0, rows))
        values.copy_(values.index_select(0, rows))


# The symbolic sizes of each step's per-call inputs (`CompileConfig.symbolic`): batch rows,
# prompt length, cache length, frame count. The cache tensors are marked once, when allocated.
def _audio_dims(features, frame_mask, dims=(0, 1)):
    return [(features, dims), (frame_mask, dims)]


def _dims(fn: Callable, dims: tuple[int, ...]):
    return functools.partial(fn, dims=dims) if dims else None


def _prefill_dims(embeds, position_ids, cache, cache_position, key_valid):
    return [(embeds, (0, 1)), (position_ids, (0, 1)), (cache_position, (0,)), (key_valid, (0, 1))]


def _decode_dims(token_ids, position_ids, cache, cache_position, key_valid):
    return [(token_ids, (0,)), (position_ids, (0,)), (key_valid, (0, 1))]


def _reorder_dims(cache, rows):
    return [(rows, (0,))]


@dataclass
class Prepared:
    """A request padded to its buckets: everything the three regions take.

    The audio path runs on one row per request (`input_ids`, `features`); the LLM on
    `requests x num_beams` rows, padded to a batch bucket (`position_ids`, `key_valid`, `cache`).
    """

    rows: int  # real requests; the rest are padding
    num_beams: int
    input_ids: torch.Tensor  # (B, S) left-padded with 0, one row per request
    position_ids: torch.Tensor  # (B', S), B' = rows(requests x beams)
    key_valid: torch.Tensor  # (B', L) False on left padding and padded rows
    cache: list
    features: torch.Tensor | None  # (B, F, 160)
    frame_mask: torch.Tensor | None  # (B, F)
    llm_rows: torch.Tensor | None  # (B',) request of each LLM row; None: the same rows

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1]


@dataclass
class Generation:
    """One request's result.

    tokens: the new tokens, up to (not including) the first EOS.
    finished: True if it ended with an EOS; False if it ran out of `max_new_tokens` (cut).
    score: beam search only: the sequence's log-probability divided by its length (HF's
        `sequences_scores`, on logits that are not divided by `logits_scaling`).
    """

    tokens: list[int]
    finished: bool
    score: float | None = None


class Generator:
    """Greedy or beam-search generation through four steps: the audio path (encoder and
    projector), prefill, the decode step and beam search's cache reorder.

    compile: None runs the steps eagerly (`SpeechPipeline`'s default); a `CompileConfig`
        compiles each as one graph (see `granite_fms.inference.compile`). With symbolic
        shapes the LLM steps see at least 2 rows (a lone request gets a masked padding row):
        Dynamo specialises size 1, so one padding row buys one graph for every batch size.
    max_caches: static KV caches kept, one per (rows, length) bucket, least recently used
        dropped first (a dropped one is allocated again when its bucket returns).
    """

    def __init__(
        self,
        model: GraniteSpeech,
        policy: BucketPolicy | None = None,
        *,
        compile: CompileConfig | None = None,
        max_caches: int = 8,
    ):
        self.model = model.eval()
        self.policy = policy or BucketPolicy()
        self.config = compile
        self.max_caches = max_caches
        self._caches: OrderedDict[tuple[int, int], list] = OrderedDict()
        self.warmed_up: list[dict] = []
        self.created = time.time()  # what an artifact collects was written after this
        steps = {  # one function (code object) per step: Dynamo caches graphs per code object
            "encode": model.audio_embeddings,
            "prefill": lambda *args: _prefill(model, *args),
            "decode": lambda *args: _decode(model, *args),
            "reorder": _reorder,
        }
        self.regions = {} if compile is None else self._regions(steps, compile)
        self.encode, self.prefill, self.decode, self.reorder = (
            self.regions.get(name, step) for name, step in steps.items()
        )

    def _regions(self, steps: dict[str, Callable], config: CompileConfig) -> dict[str, Region]:
        """The steps compiled. Dynamo's recompile_limit (8) would stop a region past 8 graphs
        (with fullgraph=True it raises FailOnRecompileLimitHit): it is raised while a region
        runs, to 4x the graphs of a static policy's largest region (audio x prompt x batch
        buckets), which leaves room for longer audio, more rows, cache lengths."""
        policy, model = self.policy, self.model
        symbolic_frames = policy.audio_frames is None
        audio_buckets = 4 if symbolic_frames else len(policy.audio_frames)
        limit = 4 * audio_buckets * len(policy.prompt_tokens) * len(policy.batch)
        if config.regional:  # blocks: their sizes symbolic, or static per bucket
            frames = None if symbolic_frames else False  # automatic dynamic for frames
            compile_blocks(model.encoder.layers, config, config.symbolic or frames)
            compile_blocks(model.language_model.base_model.layers, config, config.symbolic)
        audio = ((0,) if config.symbolic else ()) + ((1,) if symbolic_frames else ())
        llm = config.symbolic  # the LLM steps' sizes: symbolic or one graph per bucket
        mode = config.decode_mode(self.device)
        # A step in CUDA graphs stays one graph: one capture of every layer, not forty.
        cuda_graphs = mode is not None and "reduce-overhead" in mode
        precompile = saves_dynamo_output(model)
        common = dict(limit=limit, compiled=not config.regional, precompile=precompile)
        return {
            # The merge stays outside the audio graph: a handful of small ops, and inside it
            # they would depend on the prompt's length too.
            "encode": Region(
                "encode", steps["encode"], config, dims=_dims(_audio_dims, audio), **common
            ),
            "prefill": Region(
                "prefill", steps["prefill"], config, dims=llm and _prefill_dims, **common
            ),
            "decode": Region(
                "decode",
                steps["decode"],
                config,
                dims=llm and _decode_dims,
                mode=mode,
                limit=limit,
                compiled=not config.regional or cuda_graphs,
                precompile=precompile,
            ),
            "reorder": Region(
                "reorder",
                steps["reorder"],
                config,
                dims=llm and _reorder_dims,
                limit=limit,
                precompile=precompile,
            ),
        }

    @property
    def compiles(self) -> dict[str, int]:
        """Graphs compiled so far, per region (regional: the blocks compiled in it)."""
        return {name: region.compiles for name, region in self.regions.items()}

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prepare(
        self,
        input_ids: Sequence[torch.Tensor],
        features: AudioFeatures | None = None,
        max_new_tokens: int = 128,
        num_beams: int = 1,
    ) -> Prepared:
        """Pad prompts (placeholders already expanded) and features to their buckets.

        Checks placeholder counts against the audio on the host, before anything is compiled.
        """
        if not input_ids:
            raise ValueError("no prompts")
        cfg = self.model.config
        check_prompt_ids(input_ids, cfg.text_config.src_vocab_size, cfg.audio_token_index)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        rows = len(input_ids)
        if features is not None and features.input_features.shape[0] != rows:
            raise ValueError(f"{rows} prompts for {features.input_features.shape[0]} audio clips")
        symbolic = self.config is not None and self.config.symbolic
        least = 2 if symbolic else 1  # see the class docstring
        batch = max(self.policy.rows(rows), least)
        seq = self.policy.tokens(max(len(ids) for ids in input_ids))
        device = self.device
        ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        valid = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        for i, row in enumerate(input_ids):
            ids[i, seq - len(row) :] = torch.as_tensor(row, device=device)
            valid[i, seq - len(row) :] = True

        llm_rows = None
        llm_batch = max(self.policy.rows(rows * num_beams), least)
        if num_beams > 1:  # beams of request i are LLM rows i*K .. i*K+K-1
            llm_rows = torch.arange(rows, device=device).repeat_interleave(num_beams)
            llm_rows = F.pad(llm_rows, (0, llm_batch - llm_rows.numel()))
            valid = valid.index_select(0, llm_rows)
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        length = self.policy.cache_len(seq, max_new_tokens)
        key_valid = F.pad(valid, (0, length - seq), value=True)
        key_valid[rows * num_beams :] = False

        feats = mask = None
        if features is not None:  # symbolic rows: no padding rows for the audio path
            feats, mask = self._pad_audio(features, rows if symbolic else batch)
            self.model.check_audio_inputs(ids, feats, mask)
        elif (ids == self.model.config.audio_token_index).any():
            raise ValueError("the prompts hold audio placeholders but no audio was given")
        cache = self._cache(llm_batch, length)
        return Prepared(rows, num_beams, ids, position_ids, key_valid, cache, feats, mask, llm_rows)

    def _pad_audio(self, features: AudioFeatures, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and frame mask padded to `rows` clips and the policy's frame count."""
        n, real = features.input_features.shape[1], features.input_features.shape[0]
        frames = self.policy.frames(n)
        feats = torch.zeros(rows, frames, features.input_features.shape[2], device=self.device)
        mask = torch.zeros(rows, frames, dtype=torch.bool, device=self.device)
        feats[:real, :n] = features.input_features.to(self.device)
        mask[:real, :n] = features.input_features_mask.to(self.device)
        return feats, mask

    def _cache(self, batch: int, length: int) -> list:
        """The static KV cache of a bucket, reused: a new address would make CUDA graphs
        re-record. At most `max_caches` are kept."""
        key = (batch, length)
        if key in self._caches:
            self._caches.move_to_end(key)
        else:
            self._caches[key] = cache = allocate_cache(self.model, batch, length)
            symbolic = self.config is not None and self.config.symbolic
            if symbolic and not self.regions["decode"].loaded:  # loaded graphs take no marks
                for t in (t for pair in cache for t in pair):  # (rows, kvheads, length, dim)
                    torch._dynamo.maybe_mark_dynamic(t, (0, 2))
            if len(self._caches) > self.max_caches:
                self._caches.popitem(last=False)
        return self._caches[key]

    @torch.no_grad()
    def generate(
        self,
        input_ids: Sequence[torch.Tensor],
        features: AudioFeatures | None = None,
        options: GenerationOptions | None = None,
        **changes,
    ) -> list[Generation]:
        """New tokens for each request: greedy (`num_beams=1`) or beam search.

        The loop is the same for both: features -> prepare (pad to buckets) -> embed (audio
        path) -> prefill -> decode steps; the search only chooses each step's next rows.
        options: `GenerationOptions` (budgets, beams, EOS ids; None: no EOS here); keyword
            arguments replace its fields. Beam search is Hugging Face's `generate(num_beams=K)`
            with its defaults, scored on HF's undivided logits.
        """
        (options,) = with_changes(changes, options or GenerationOptions())
        budgets = options.budgets(len(input_ids))
        positions = self.model.config.text_config.max_expected_seq_len
        check_context([len(ids) for ids in input_ids], budgets, positions)
        p = self.prepare(input_ids, features, max(budgets), options.num_beams)
        search = self._search(p, budgets, options.eos_token_id)
        self._loop(p, search, max(budgets))
        return search.results()

    def _search(
        self, p: Prepared, budgets: list[int], eos_token_id: tuple[int, ...] | None
    ) -> "_Search":
        eos = torch.tensor(eos_token_id or (), dtype=torch.long, device=self.device)
        budget = torch.tensor(budgets, device=self.device)
        if p.num_beams == 1:
            return _Greedy(p.rows, budget, eos)
        scale = self.model.config.text_config.logits_scaling
        return _BeamSearch(p.rows, p.num_beams, p.position_ids.shape[0], budget, eos, scale)

    def _loop(self, p: Prepared, search: "_Search", steps: int) -> None:
        """features -> embed (audio path) -> prefill -> up to `steps` decode steps."""
        self.model.start_request(p.features is not None)
        # Eager means eager: blocks that a regional compile compiled in place run eagerly too.
        stance = "default" if self.config is not None else "force_eager"
        with torch.compiler.set_stance(stance):
            embeds = self._embed(p)
            seq = p.prompt_len
            slots = torch.arange(seq, device=self.device)
            logits = self.prefill(embeds, p.position_ids, p.cache, slots, p.key_valid)
            position = p.position_ids[:, -1:]
            for step in range(steps):
                tokens, order = search.step(logits, step)
                if step + 1 == steps or (step % 8 == 7 and bool(search.done())):
                    break  # the host sync of `done` runs every 8 steps only
                if order is not None:
                    self.reorder(p.cache, order)
                position = position + 1
                slot = torch.full((1,), seq + step, device=self.device)
                logits = self.decode(tokens, position, p.cache, slot, p.key_valid)

    def _embed(self, p: Prepared) -> torch.Tensor:
        """Prompt embeddings of the LLM's rows, the audio path's output merged in. The audio
        path runs on `policy.audio_rows` clips at a time."""
        if p.features is None:
            embeds = self.model.language_model.base_model.embedding(p.input_ids)
        else:
            size = self.policy.audio_rows
            chunks = zip(p.features.split(size), p.frame_mask.split(size), strict=True)
            audio = torch.cat([self.encode(features, mask) for features, mask in chunks])
            embeds = self.model.merge_audio(p.input_ids, audio, p.frame_mask)
        return embeds if p.llm_rows is None else embeds.index_select(0, p.llm_rows)

    @torch.no_grad()
    def warmup(
        self,
        audio_frames: Sequence[int] | None = None,
        batch: Sequence[int] = (1,),
        *,
        text_tokens: int = 64,
        max_new_tokens: int = 128,
        num_beams: Sequence[int] = (1,),
        progress: bool = True,
    ) -> None:
        """Compile now the graphs that requests of these shapes will use: for each audio
        length in encoder frames, batch size and beam count, a request of silence whose
        prompt holds `text_tokens` text tokens, prefilled and decoded for two steps (the decode
        step's cache length follows from `max_new_tokens`), under a progress bar.

        Lengths are rounded to the policy's buckets. Default lengths: the policy's audio
        buckets; with a symbolic frame count a clip that fills one encoder block but for one
        frame and one over two blocks (what the audio graphs specialise on), and with static
        shapes also 3 blocks less a frame and 4, 8, 16 and 32 s (their prompt buckets).
        """
        block = self.model.config.encoder_config.context_size
        cases = {block - 1, block + block // 2}
        if self.config is None or not self.config.symbolic:
            cases |= {3 * block - 1, 200, 400, 800, 1600}
        frames = sorted({self.policy.frames(f) for f in audio_frames or ()})
        frames = frames or sorted(self.policy.audio_frames or cases)
        shapes = [(f, b, k) for f in frames for b in batch for k in num_beams]
        bar = tqdm(shapes, desc="compiling", unit="shape", disable=not progress)
        with logging_redirect_tqdm():
            for f, b, k in bar:
                bar.set_postfix_str(f"{f} frames, batch {b}, {k} beams")
                self._warm(f, b, k, text_tokens, max_new_tokens)

    def _warm(self, frames: int, batch: int, beams: int, text: int, max_new_tokens: int) -> None:
        mask = torch.ones(batch, frames, dtype=torch.bool)
        count = int(self.model.audio_token_counts(mask[:1])[0])
        ids = [torch.tensor([1] * text + [self.model.config.audio_token_index] * count)] * batch
        dim = self.model.config.encoder_config.input_dim
        feats = AudioFeatures(torch.zeros(batch, frames, dim), mask, torch.full((batch,), count))
        p = self.prepare(ids, feats, max_new_tokens, beams)
        self._loop(p, self._search(p, [2] * batch, None), 2)
        self.warmed_up.append(
            dict(
                frames=frames,
                batch=batch,
                num_beams=beams,
                text_tokens=text,
                max_new_tokens=max_new_tokens,
            )
        )

    def save_compiled(self, path: str | Path) -> Path:
        """Write the graphs compiled in this process (with `warmup`) as one artifact that
        `CompileConfig(cache=path)` loads in another process (`save_artifact`)."""
        if self.config is None:
            raise ValueError("nothing compiled: call compile() and warmup() first")
        return save_artifact(
            path,
            self.model,
            self.config,
            self.model.device,
            shapes=self.warmed_up,
            since=self.created,
        )


def check_context(prompt_lengths: Sequence[int], budgets: Sequence[int], positions: int) -> None:
    """Each request's prompt (placeholders expanded) and budget must fit the LLM's positions
    (`text_config.max_expected_seq_len`): past them FMS's rotary embedding raises an
    IndexError, and a huge budget would first allocate its KV cache."""
    for i, (length, budget) in enumerate(zip(prompt_lengths, budgets, strict=True)):
        if length + budget > positions:
            room = positions - length
            advice = f"lower max_new_tokens to {room}" if room > 0 else "shorten the prompt"
            raise ValueError(
                f"request {i}: its prompt ({length} tokens, audio included) and max_new_tokens "
                f"({budget}) need {length + budget} positions, but the model has {positions} "
                f"(text_config.max_expected_seq_len); {advice}"
            )


# ----- the two searches: which rows continue, with which tokens --------------------------------


class _Search(Protocol):
    """How the loop chooses each step's next rows: greedy or beam search."""

    def step(self, logits: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B', vocab) of step t -> next tokens (B', 1), and the LLM rows they continue
        (None: each row continues itself)."""
        ...

    def done(self) -> torch.Tensor:
        """True when no further step can change a result (a 0-dim device tensor: no sync)."""
        ...

    def results(self) -> list[Generation]: ...


class _Greedy:
    def __init__(self, rows: int, budget: torch.Tensor, eos: torch.Tensor):
        self.rows, self.budget, self.eos = rows, budget, eos
        self.tokens: list[torch.Tensor] = []
        self.finished = torch.zeros(rows, dtype=torch.bool, device=budget.device)

    def step(self, logits, t):
        tokens = logits.argmax(-1, keepdim=True)
        self.tokens.append(tokens)
        self.finished |= torch.isin(tokens[: self.rows, 0], self.eos) & (t < self.budget)
        return tokens, None

    def done(self):
        return (self.finished | (len(self.tokens) >= self.budget)).all()

    def results(self):
        out = []
        eos = set(self.eos.tolist())
        for row, budget in zip(
            torch.cat(self.tokens, 1)[: self.rows].tolist(), self.budget.tolist(), strict=True
        ):
            row = row[:budget]
            end = next((i for i, tok in enumerate(row) if tok in eos), None)
            out.append(Generation(row if end is None else row[:end], end is not None))
        return out


_NEG = -1.0e9  # HF's "impossible" score


class _BeamSearch:
    """Hugging Face's vectorised beam search (transformers 5.x `_beam_search`, defaults
    `length_penalty=1.0`, `early_stopping=False`), for R requests x K beams, with a budget per
    request. Scores are log-softmax of HF's logits (ours times `logits_scaling`).

    Per request: K running beams, the 2K (1 + #EOS ids: more) best continuations each step,
    the K best finished hypotheses, and HF's heuristic for when none of them can improve. A
    request past its budget or its heuristic is frozen (nothing changes it), so steps run
    after it only cost compute, as in a batch of HF's.
    """

    def __init__(self, rows, beams, llm_batch, budget, eos, logits_scaling):
        device = budget.device
        self.rows, self.beams, self.budget, self.eos = rows, beams, budget, eos
        self.scale = logits_scaling
        self.keep = max(2, 1 + eos.numel()) * beams
        steps = int(budget.max())
        self.seq = torch.zeros(rows, beams, steps, dtype=torch.long, device=device)
        self.scores = torch.full((rows, beams), _NEG, device=device)
        self.scores[:, 0] = 0.0  # only the first beam's continuations count at step 0
        self.best_seq = self.seq.clone()
        self.best_scores = torch.full((rows, beams), _NEG, device=device)
        self.best_len = torch.zeros(rows, beams, dtype=torch.long, device=device)
        self.best_eos = torch.zeros(rows, beams, dtype=torch.bool, device=device)
        self.is_finished = torch.zeros(rows, beams, dtype=torch.bool, device=device)
        self.improvable = torch.ones(rows, 1, dtype=torch.bool, device=device)
        self.top_k = torch.arange(self.keep, device=device) < beams
        self.offset = torch.arange(rows, device=device)[:, None] * beams
        self.pad_rows = torch.arange(rows * beams, llm_batch, device=device)
        self.t = 0

    def step(self, logits, t):
        rows, beams = self.rows, self.beams
        vocab = logits.shape[-1]
        logp = torch.log_softmax(logits[: rows * beams].float() * self.scale, dim=-1)
        logp = logp.view(rows, beams, vocab) + self.scores[:, :, None]
        top_lp, top_idx = torch.topk(logp.view(rows, -1), self.keep)
        beam, token = top_idx // vocab, top_idx % vocab
        cand = self.seq.gather(1, beam[:, :, None].expand(-1, -1, self.seq.shape[2])).clone()
        cand[:, :, t] = token
        at_eos = torch.isin(token, self.eos)
        hits = at_eos | (t + 1 >= self.budget)[:, None]
        active = (t < self.budget)[:, None]

        # running beams: the best K continuations that did not stop
        running_lp = top_lp + hits.float() * _NEG
        nxt = torch.topk(running_lp, beams).indices
        self.seq = cand.gather(1, nxt[:, :, None].expand_as(self.seq))
        self.scores = running_lp.gather(1, nxt)
        source = beam.gather(1, nxt)

        # finished hypotheses: stopped continuations among the top K, length-normalised
        just = hits & self.top_k[None, :]
        cand_score = top_lp / float(t + 1)
        cand_score = cand_score + (~self.improvable).float() * _NEG
        cand_score = cand_score + (~just).float() * _NEG + (~active).float() * _NEG
        merged = torch.cat([self.best_scores, cand_score], 1)
        pick = torch.topk(merged, beams).indices
        self.best_scores = merged.gather(1, pick)
        self.best_seq = torch.cat([self.best_seq, cand], 1).gather(
            1, pick[:, :, None].expand_as(self.best_seq)
        )
        length = torch.full_like(token, t + 1)
        self.best_len = torch.cat([self.best_len, length], 1).gather(1, pick)
        self.best_eos = torch.cat([self.best_eos, at_eos], 1).gather(1, pick)
        self.is_finished = torch.cat([self.is_finished, just & active], 1).gather(1, pick)

        # HF's early-stop heuristic (early_stopping=False): can the best running beam, at its
        # current length, still beat the worst finished hypothesis?
        best_running = self.scores[:, :1] / float(t + 1)
        worst = torch.where(self.is_finished, self.best_scores.min(1, keepdim=True).values, _NEG)
        self.improvable &= (best_running > worst).any(-1, keepdim=True)
        self.t = t + 1

        order = torch.cat([(source + self.offset).flatten(), self.pad_rows])
        tokens = torch.cat([self.seq[:, :, t].flatten(), self.pad_rows * 0])
        return tokens[:, None], order

    def done(self):
        return (~self.improvable[:, 0] | (self.t >= self.budget)).all()

    def results(self):
        out = []
        for seq, length, eos, score in zip(
            self.best_seq[:, 0].tolist(),
            self.best_len[:, 0].tolist(),
            self.best_eos[:, 0].tolist(),
            self.best_scores[:, 0].tolist(),
            strict=True,
        ):
            out.append(Generation(seq[: length - 1] if eos else seq[:length], eos, score))
        return out


__all__ = [
    "BucketPolicy",
    "Generation",
    "Generator",
    "Prepared",
    "STATIC_ATTENTION",
    "allocate_cache",
]
