"""CTC greedy decoding for Granite Speech 5.0: one graph from features to frame ids, then the
collapse on the host.

    decoder = CTCDecoder(model, compile=True)
    alignments = decoder(features)                      # one per clip
    texts = decode_texts(tokenizer, alignments)

The graph is `GraniteSpeech5.greedy_ids`, which is HF's `generate`: the argmax per output frame,
the blank on padded frames. It returns (B, T') ids rather than (B, T', vocab) logits, so the
host reads vocab-times less. `collapse` keeps, per clip, the first frame of each run of equal ids
that is not the blank: repeats are collapsed before blanks are dropped, and only then does the
tokenizer see the ids. A CTC tokenizer asked to skip special tokens would drop the blanks
first, and a real double letter ("l", blank, "l") would merge into one.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from granite_fms.audio.features5 import CTCFeatures
from granite_fms.models.granite_speech5 import GraniteSpeech5


@dataclass(frozen=True)
class Alignment:
    """One clip's greedy CTC path, collapsed."""

    tokens: list[int]  # ids, repeats collapsed, blanks dropped
    frames: list[int]  # output frame where each token's run starts
    num_frames: int  # the clip's valid output frames


def collapse(ids: torch.Tensor, valid: torch.Tensor, blank_id: int) -> list[Alignment]:
    """(B, T') frame ids and valid-frame mask -> each row's collapsed path (on the host)."""
    ids, valid = ids.cpu(), valid.cpu()
    keep = (ids != blank_id) & valid
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    out = []
    for row, kept, n in zip(ids, keep, valid.sum(dim=1).tolist(), strict=True):
        frames = kept.nonzero().flatten()
        out.append(Alignment(row[frames].tolist(), frames.tolist(), n))
    return out


def decode_texts(tokenizer, alignments: Sequence[Alignment]) -> list[str]:
    """Each collapsed path as text. `group_tokens=False`: a CTC tokenizer (transformers'
    `ParakeetTokenizer`, `Wav2Vec2CTCTokenizer`) must not collapse the ids again; others
    ignore it."""
    return [
        tokenizer.decode(a.tokens, skip_special_tokens=True, group_tokens=False) for a in alignments
    ]


class CTCDecoder:
    """Features -> collapsed greedy paths, through `greedy_ids` eager or compiled.

    compile: `torch.compile(fullgraph=True)` with the batch size and frame count symbolic, so
        batches of every size and length share a few graphs: Dynamo specialises where a size
        is 1 (one row, one output frame, one attention block at a frame rate) and, on CPU, at
        16 rows (the convolutions' backend choice). No buckets, no padding beyond the batch's
        longest clip.
    backend / mode: passed to `torch.compile`.
    """

    def __init__(
        self,
        model: GraniteSpeech5,
        *,
        compile: bool = False,
        backend: str | Callable = "inductor",
        mode: str | None = None,
    ):
        self.model = model.eval()
        self.compiled = compile
        # Up to 3 batch classes x (rates + 2) length classes; twice that leaves room for other
        # devices' kernel choices. With fullgraph=True, reaching Dynamo's default limit (8)
        # would raise instead of running eagerly.
        rates = len(model.config.subsample_layers) + 1
        self.recompile_limit = 6 * (rates + 2)
        self._ids = model.greedy_ids
        if compile:
            self._ids = torch.compile(model.greedy_ids, fullgraph=True, backend=backend, mode=mode)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def frame_ids(self, features: CTCFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T') greedy ids (blank on padded frames) and the valid-frame mask, on device."""
        feats, mask = features.to(self.device)
        if self.compiled:
            for t in (feats, mask):
                torch._dynamo.maybe_mark_dynamic(t, 0)
                torch._dynamo.maybe_mark_dynamic(t, 1)
            with torch._dynamo.config.patch(recompile_limit=self.recompile_limit):
                return self._ids(feats, mask)
        return self._ids(feats, mask)

    def __call__(self, features: CTCFeatures) -> list[Alignment]:
        ids, valid = self.frame_ids(features)
        return collapse(ids, valid, self.model.config.blank_id)


__all__ = ["Alignment", "CTCDecoder", "collapse", "decode_texts"]
