"""Generation, greedy or beam search: bucketed shapes, a static KV cache, three graphs per bucket.

    gen = Generator(model)                      # torch.compile(fullgraph=True) by default
    gen.generate([ids_with_placeholder], features, GenerationOptions(max_new_tokens=128))

Three compiled regions, each one graph with no breaks:

* `encode`: encoder and projector (`GraniteSpeech.audio_embeddings`), by default one graph
  with a symbolic frame count per batch bucket (a few more where a length specialises it:
  one or two encoder blocks, whole blocks), or a graph per (audio, batch) bucket with
  static audio buckets; the merge into the prompt's embeddings runs eagerly after it (a few
  small ops with no host sync);
* `prefill`: the LLM over the prompt embeddings, writing a preallocated KV cache;
* `decode`: one token for every row, reading and writing the same cache in place.

Shapes come from a `BucketPolicy`, not from the request (the audio's frame count is a
symbolic size instead), so a stream of requests of any audio length, prompt length and batch
size compiles a small, known number of graphs. Padding never changes a result: padded frames
are masked in the encoder (frame mask), padded prompt slots and padded batch rows are masked
in the LLM (`key_valid`), so bucketing only costs compute.

The cache is static (gpt-fast style): per layer a (B, kvheads, L, head_dim) key and value tensor,
written with `index_copy_` at `cache_position`, attended over its whole length with a mask. The
decode step therefore has the same shapes at every step, which is what CUDA graphs
(`mode="reduce-overhead"`) need; FMS's default cache grows by `torch.cat` and changes shape
every step.

Feature extraction (decoding files, resampling, the mel spectrogram) stays outside the graphs:
it runs once per clip on the host, its input length is the raw audio's, and its output is
what the buckets pad.
"""

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from fms.modules.attention import register_attention_op
from tqdm.auto import tqdm

from granite_fms.audio.features import AudioFeatures
from granite_fms.audio.processor import check_prompt_ids
from granite_fms.checks import is_int
from granite_fms.inference.options import GenerationOptions, with_changes
from granite_fms.inference.quantize import quantize_llm
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
    """Padded shapes for the compiled graphs.

    audio_frames: None (default): no audio buckets. Features are padded only to the batch's
        longest clip and the audio graph takes the frame count as a symbolic size: a few
        graphs per batch bucket for every length (Dynamo specialises on a clip within one
        encoder block, within two, on whole blocks; 4 at most in the tests), no padding
        waste. A tuple: static buckets in encoder frames (50 per second of audio), e.g. whole
        200-frame encoder blocks (200, 400, 800, 1600: 4, 8, 16, 32 s), a graph per bucket;
        longer audio takes the next multiple of the largest bucket, never truncated.
        Compared by `experiments.bench_audio_buckets`.
    prompt_tokens: prompt length after placeholder expansion (about 10 tokens per second
        of audio plus the text); beyond the largest, multiples of it.
    batch: rows; a batch is padded with masked rows to the next bucket (beyond: multiples).
    cache_tokens: the static KV cache holds `prompt bucket + max_new_tokens` rounded up to a
        multiple of this, so a few decode graphs serve all requests.
    """

    audio_frames: tuple[int, ...] | None = None
    prompt_tokens: tuple[int, ...] = (64, 128, 256, 512)
    batch: tuple[int, ...] = (1, 2, 4)
    cache_tokens: int = 256

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
        if not is_int(self.cache_tokens):
            raise TypeError(f"cache_tokens must be an int, got {self.cache_tokens!r}")
        if self.cache_tokens < 1:
            raise ValueError(f"cache_tokens must be positive, got {self.cache_tokens}")

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
    beam_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step for every row: token_ids (B, 1) -> logits (B, vocab); the cache grows in place.

    beam_rows: beam search's (B,) row each new row continues; the cache is reordered by it
    first, inside the graph (a gather per layer, as HF's `reorder_cache`).
    """
    if beam_rows is not None:
        for keys, values in cache:
            keys.copy_(keys.index_select(0, beam_rows))
            values.copy_(values.index_select(0, beam_rows))
    embeds = model.language_model.base_model.embedding(token_ids)
    return _prefill(model, embeds, position_ids, cache, cache_position, key_valid)


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
    """Greedy or beam-search generation: the audio path (encoder + projector), prefill and
    decode step each one compiled graph per bucket.

    compile: False runs the same bucketed static-cache loop eagerly (`SpeechPipeline`'s default).
    backend / mode: passed to `torch.compile`; `mode="reduce-overhead"` captures the decode
        step in CUDA graphs on a GPU (the default when the model is on CUDA).
    regional: compile the repeated blocks (each conformer block, each decoder layer) instead of
        whole regions: one graph serves every layer, so the cold compile is shorter; the code
        between blocks runs eagerly. PyTorch's regional-compilation recipe compiles the blocks
        in place (`nn.Module.compile`), so the model's blocks stay compiled afterwards.
    cache_dir: root of Inductor's on-disk caches (FX graph and AOTAutograd caches) for this
        process, so a later process that compiles the same graphs loads them instead of
        generating code (a warm start). Set before the first compile; process-wide.
    max_caches: static KV caches kept, one per (rows, length) bucket, least recently used
        dropped first (a dropped one is allocated again when its bucket returns).
    quantize: "int8" quantises the LLM's linear weights in place first (weight-only, torchao;
        see `granite_fms.inference.quantize`).
    """

    def __init__(
        self,
        model: GraniteSpeech,
        policy: BucketPolicy | None = None,
        *,
        compile: bool = True,
        backend: str | Callable = "inductor",
        mode: str | None = None,
        regional: bool = False,
        cache_dir: str | os.PathLike | None = None,
        max_caches: int = 8,
        quantize: str | None = None,
    ):
        if quantize is not None:
            quantize_llm(model, quantize)
        self.model = model.eval()
        self.policy = policy or BucketPolicy()
        if mode is None and self.device.type == "cuda" and backend == "inductor":
            mode = "reduce-overhead"
        self.compiled = compile
        self.mode = mode if compile else None
        self.max_caches = max_caches
        self._caches: OrderedDict[tuple[int, int], list] = OrderedDict()
        if compile and cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).resolve())

        # Each region is one code object with a graph per bucket. Dynamo's default
        # recompile_limit (8) would stop it past 8 buckets: with fullgraph=True that raises
        # FailOnRecompileLimitHit (it does not fall back to eager). The limit is raised only
        # while a region runs: the largest region has a graph per (audio, batch) or (prompt,
        # batch) bucket; the factor 4 leaves room for buckets past the largest ones (longer
        # audio, more rows), several cache lengths, beam search's decode and other Generators.
        policy = self.policy
        symbolic_audio = policy.audio_frames is None
        audio = 4 if symbolic_audio else len(policy.audio_frames)
        limit = 4 * audio * len(policy.prompt_tokens) * len(policy.batch)
        options = dict(fullgraph=True, dynamic=False, backend=backend)

        def region(fn: Callable, region_mode: str | None = None, frames_dim: bool = False):
            if not compile:
                return fn
            # Regional: the region runs eagerly and calls the compiled blocks, whose graphs
            # (one per shape) need the same limit.
            graphs = fn if regional else torch.compile(fn, mode=region_mode, **options)

            def run(*args):
                if frames_dim and symbolic_audio and not regional:  # (B, T, ...): T symbolic
                    for arg in args:
                        torch._dynamo.maybe_mark_dynamic(arg, 1)
                with torch._dynamo.config.patch(recompile_limit=limit):
                    return graphs(*args)

            return run

        if compile and regional:
            # Encoder blocks see the audio's frame count: symbolic unless the audio is bucketed.
            for block in model.encoder.layers:
                block.compile(
                    mode=mode, **(options | dict(dynamic=None if symbolic_audio else False))
                )
            for block in model.language_model.base_model.layers:
                block.compile(mode=mode, **options)
        # The merge stays outside the audio graph: a handful of small ops, and inside it they
        # would multiply the audio graphs by the prompt buckets.
        self.encode = region(model.audio_embeddings, frames_dim=True)
        self.prefill = region(lambda *args: _prefill(model, *args))
        self.decode = region(lambda *args: _decode(model, *args), self.mode)

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
        batch = self.policy.rows(rows)
        seq = self.policy.tokens(max(len(ids) for ids in input_ids))
        device = self.device
        ids = torch.zeros(batch, seq, dtype=torch.long, device=device)
        valid = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        for i, row in enumerate(input_ids):
            ids[i, seq - len(row) :] = torch.as_tensor(row, device=device)
            valid[i, seq - len(row) :] = True

        llm_rows = None
        llm_batch = self.policy.rows(rows * num_beams)
        if num_beams > 1:  # beams of request i are LLM rows i*K .. i*K+K-1
            llm_rows = torch.arange(rows, device=device).repeat_interleave(num_beams)
            llm_rows = F.pad(llm_rows, (0, llm_batch - llm_rows.numel()))
            valid = valid.index_select(0, llm_rows)
        position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
        length = self.policy.cache_len(seq, max_new_tokens)
        key_valid = F.pad(valid, (0, length - seq), value=True)
        key_valid[rows * num_beams :] = False

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
        cache = self._cache(llm_batch, length)
        return Prepared(rows, num_beams, ids, position_ids, key_valid, cache, feats, mask, llm_rows)

    def _cache(self, batch: int, length: int) -> list:
        """The static KV cache of a bucket, reused: a new address would make CUDA graphs
        re-record. At most `max_caches` are kept."""
        key = (batch, length)
        if key in self._caches:
            self._caches.move_to_end(key)
        else:
            self._caches[key] = allocate_cache(self.model, batch, length)
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
        if p.features is None:
            embeds = self.model.language_model.base_model.embedding(p.input_ids)
        else:
            audio = self.encode(p.features, p.frame_mask)
            embeds = self.model.merge_audio(p.input_ids, audio, p.frame_mask)
        if p.llm_rows is not None:
            embeds = embeds.index_select(0, p.llm_rows)
        seq = p.prompt_len
        logits = self.prefill(
            embeds, p.position_ids, p.cache, torch.arange(seq, device=self.device), p.key_valid
        )
        position = p.position_ids[:, -1:]
        for step in range(steps):
            tokens, order = search.step(logits, step)
            if step + 1 == steps or (step % 8 == 7 and bool(search.done())):
                break  # the host sync of `done` runs every 8 steps only
            position = position + 1
            slot = torch.full((1,), seq + step, device=self.device)
            logits = self.decode(tokens, position, p.cache, slot, p.key_valid, order)

    @torch.no_grad()
    def warmup(
        self,
        audio_frames: Sequence[int] | None = None,
        batch: Sequence[int] = (1,),
        *,
        text_tokens: int = 64,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        progress: bool = True,
    ) -> None:
        """Compile now the graphs that requests of these shapes will use: for each audio
        length in encoder frames and batch size, a request of silence whose prompt holds
        `text_tokens` text tokens, prefilled and decoded for two steps (the decode graph
        depends on the cache length, fixed by `max_new_tokens`).

        Default lengths: the policy's audio buckets; with symbolic audio 4, 8, 16 and 32 s
        (their prompt buckets) and one length of each other case the audio graph
        specialises on (within one encoder block, within two, not whole blocks).
        """
        block = self.model.config.encoder_config.context_size
        cases = (block // 2 + 1, block + block // 2, 3 * block - 1)
        frames = sorted(audio_frames or self.policy.audio_frames or {*cases, 200, 400, 800, 1600})
        audio_id = self.model.config.audio_token_index
        shapes = [(f, b) for f in frames for b in batch]
        for f, b in tqdm(shapes, desc="compiling buckets", unit="bucket", disable=not progress):
            mask = torch.ones(b, f, dtype=torch.bool)
            count = int(self.model.audio_token_counts(mask[:1])[0])
            ids = [torch.tensor([1] * text_tokens + [audio_id] * count)] * b
            dim = self.model.config.encoder_config.input_dim
            feats = AudioFeatures(torch.zeros(b, f, dim), mask, torch.full((b,), count))
            p = self.prepare(ids, feats, max_new_tokens, num_beams)
            self._loop(p, self._search(p, [2] * b, None), 2)


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
