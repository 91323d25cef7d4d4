"""Granite Speech 5.0 (CTC): RTFx at batch 1, 8, 32 and 128 for FMS eager, FMS compiled and HF
eager, and the graphs the compiled decoder makes over lengths x batch sizes -> a run file.

    python -m experiments.bench_ctc [--quick] [--threads 1] [--device cuda --model 5.0-470m]

The model: the built-in `tiny-ctc` variant's shapes (or the real `5.0-470m`'s), random weights
written by `GraniteSpeech5ForCTC.save_pretrained` and loaded both ways, with a character-level
CTC tokenizer. Every row of a batch is the same 10 s of speech (the espeak fixtures end to end),
so no clip is padded: in fp32 every mode gives the same text; in bf16 the two libraries round
differently, so each mode's character error rate against HF's text is recorded too.

RTFx = seconds of audio / wall seconds of the whole call, waveforms to text: FMS runs its
feature extractor clip by clip, then
`CTCDecoder` (eager, or compiled with Inductor: symbolic batch and length) and the tokenizer;
HF runs its feature extractor on the batch, `generate` and `batch_decode`. Each call's feature
and model seconds are kept too. The modes are timed round robin per batch after a warm-up call
(which compiles; its seconds are kept).

Census: `CTCDecoder(compile=True)` with a counting eager backend over clips of 0.5-30 s x
batches of 1, 2, 8 and 32 rows (the last row of each batch 3/4 as long, so batches are padded),
then new lengths of the same sizes: the graphs each sweep compiles, against the classes Dynamo
specialises (`specialisation`: a size where it is 1, and 16 rows on CPU).

--quick: batch 2 only (one Inductor compile) and census batches of 1 and 2 rows.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from experiments import harness

MODELS = ("tiny-ctc", "5.0-470m")
AUDIO_S = 10.0
BATCHES, QUICK_BATCHES = (1, 8, 32, 128), (2,)
FRAMES_PER_SECOND = 50  # encoder input frames
# fmt: off
CENSUS_SECONDS = (0.5, 1.3, 2.9, 4.7, 7.5, 11, 17, 23, 30)
SECOND_SECONDS = (0.6, 1.2, 2.8, 4.6, 7.3, 10.6, 16.5, 22, 29.5)
CENSUS_BATCHES, QUICK_CENSUS_BATCHES = (1, 2, 8, 32), (1, 2)
# fmt: on
MODES = ("fms_eager", "fms_compiled", "hf_eager")
HEADLINE = ["rtfx_fms_compiled_b32", "fms_compiled_over_hf_eager_b32", "census_graphs_sweep"]


def parse(argv):
    p = harness.parser(__doc__)
    p.add_argument("--model", default="tiny-ctc", choices=MODELS)
    return p.parse_args(argv)


def speech(seconds: float) -> torch.Tensor:
    """The fixture sentences end to end, repeated to `seconds` of 16 kHz audio."""
    from granite_fms.audio.features import load_audio

    data = harness.REPO / "tests" / "data"
    names = ("fox_16k.wav", "long_16k.wav", "short_16k.wav")
    once = torch.cat([load_audio(data / n) for n in names])
    n = round(seconds * 16000)
    return once.repeat(n // once.numel() + 1)[:n]


def build(name: str, device: torch.device, dtype: torch.dtype, tmp: Path):
    """(HF model, FMS model, tokenizer) with the same random weights, each loaded from the
    checkpoint in `dtype` as its library loads it, eval, no grad."""
    import transformers
    from fms.models import get_model

    import granite_fms
    from granite_fms.app.demo import ctc_tokenizer
    from granite_fms.testing import hf5_config_from_fms, save_hf5_checkpoint

    config = get_model("granite_speech5", name, device_type="meta").config
    # A raised blank logit, so that greedy paths hold blanks as a trained model's do.
    save_hf5_checkpoint(
        tmp,
        hf5_config_from_fms(config),
        blank_logit=3.0,
        tokenizer=ctc_tokenizer(config.src_vocab_size),
    )
    hf = transformers.GraniteSpeech5ForCTC.from_pretrained(tmp, dtype=dtype).to(device).eval()
    fm = granite_fms.load_model(tmp, dtype=dtype, device=device)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp)
    return hf.requires_grad_(False), fm.requires_grad_(False), tokenizer


def fms_call(decoder, fe, tokenizer, waves, device, stages: list) -> Callable[[], list[str]]:
    from granite_fms.inference.ctc import decode_texts

    def call() -> list[str]:
        start = time.perf_counter()
        features = fe(waves)
        harness.sync(device)
        mid = time.perf_counter()
        alignments = decoder(features)  # ends with the ids on the host
        end = time.perf_counter()
        stages.append({"features_s": mid - start, "model_s": end - mid})
        return decode_texts(tokenizer, alignments)

    return call


def hf_call(hf, hf_fe, tokenizer, waves, device, stages: list) -> Callable[[], list[str]]:
    arrays = [w.numpy() for w in waves]

    def call() -> list[str]:
        start = time.perf_counter()
        inputs = hf_fe(arrays, sampling_rate=16000, return_tensors="pt").to(device)
        harness.sync(device)
        mid = time.perf_counter()
        ids = hf.generate(**inputs).cpu()
        end = time.perf_counter()
        stages.append({"features_s": mid - start, "model_s": end - mid})
        return tokenizer.batch_decode(ids, skip_special_tokens=True)

    return call


def throughput(hf, fm, tokenizer, device, batches, progress) -> tuple[list[dict], dict]:
    import statistics

    import transformers

    from granite_fms.app.evaluation import error_rates
    from granite_fms.audio.features5 import GraniteSpeech5FeatureExtractor
    from granite_fms.inference.ctc import CTCDecoder

    fe, hf_fe = GraniteSpeech5FeatureExtractor(), transformers.GraniteSpeech5FeatureExtractor()
    decoders = {"fms_eager": CTCDecoder(fm), "fms_compiled": CTCDecoder(fm, compile=True)}
    wave = speech(AUDIO_S)
    rows, ev = [], {}
    for batch in batches:
        waves = [wave] * batch
        stages: dict[str, list] = {m: [] for m in MODES}
        calls = {
            m: fms_call(d, fe, tokenizer, waves, device, stages[m]) for m, d in decoders.items()
        }
        calls["hf_eager"] = hf_call(hf, hf_fe, tokenizer, waves, device, stages["hf_eager"])
        texts, first = {}, {}
        for mode, call in calls.items():  # the warm-up call: compiles, and gives the texts
            first[mode], texts[mode] = harness.timed_result(call, device)
            stages[mode].clear()
        reps = (2, 3, 0.0) if batch >= 64 else (3, 7, 3.0)
        tasks = {m: harness.Task(calls[m], reps) for m in MODES}
        for mode, s in harness.round_robin(tasks, device, warm_up=False).items():
            wall_s = s["median_ms"] / 1e3
            rtfx = batch * AUDIO_S / wall_s
            split = {k: statistics.median(st[k] for st in stages[mode]) for k in stages[mode][0]}
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "rtfx": rtfx,
                    "features_ms": split["features_s"] * 1e3,
                    "model_ms": split["model_s"] * 1e3,
                    "first_call_s": first[mode],
                    "same_text_as_hf": texts[mode] == texts["hf_eager"],
                    "cer_vs_hf": error_rates(texts["hf_eager"], texts[mode])["cer"],
                    **s,
                }
            )
            ev[f"rtfx_{mode}_b{batch}"] = rtfx
            ev[f"first_call_s_{mode}_b{batch}"] = first[mode]
        ev[f"fms_compiled_over_hf_eager_b{batch}"] = (
            ev[f"rtfx_fms_compiled_b{batch}"] / ev[f"rtfx_hf_eager_b{batch}"]
        )
        ev[f"fms_compiled_over_fms_eager_b{batch}"] = (
            ev[f"rtfx_fms_compiled_b{batch}"] / ev[f"rtfx_fms_eager_b{batch}"]
        )
        ev[f"same_text_b{batch}"] = len({tuple(t) for t in texts.values()}) == 1
        ev[f"max_cer_vs_hf_b{batch}"] = max(r["cer_vs_hf"] for r in rows if r["batch"] == batch)
        progress.done(f"batch_{batch}")
    return rows, ev


def specialisation(frames: int, rows: int, config) -> tuple:
    """What Dynamo specialises for a batch of `rows` x `frames`: a size where it is 1 (the
    batch, the output frames, the attention blocks at each frame rate, the last stride-2
    conv's output) and, on CPU, 16 rows or more (the convolutions' backend choice)."""
    rates = [frames]
    for _ in config.subsample_layers:
        rates.append(rates[-1] // 2)
    blocks = tuple(n // config.context_size + 1 == 1 for n in rates)
    return (rows == 1, rows >= 16, rates[-1] == 1, (rates[-2] + 1) // 2 == 1, *blocks)


def census(fm, batches) -> tuple[dict, dict]:
    from granite_fms.audio.features5 import CTCFeatures
    from granite_fms.inference.ctc import CTCDecoder

    config, gen = fm.config, torch.Generator().manual_seed(0)

    def request(seconds: float, rows: int) -> CTCFeatures:
        frames = round(seconds * FRAMES_PER_SECOND)
        x = torch.randn(rows, frames, config.input_dim, generator=gen)
        mask = torch.ones(rows, frames, dtype=torch.bool)
        if rows > 1:
            mask[-1, frames * 3 // 4 :] = False
        return CTCFeatures(x, mask)

    explained = torch._dynamo.explain(fm.greedy_ids)(*request(CENSUS_SECONDS[3], 2))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    decoder = CTCDecoder(fm, compile=True, backend=counter)
    graphs, classes = {}, set()
    for sweep, lengths in (("sweep", CENSUS_SECONDS), ("second", SECOND_SECONDS)):
        before = counter.frame_count
        for rows in batches:
            for seconds in lengths:
                decoder(request(seconds, rows))
                classes.add(specialisation(round(seconds * FRAMES_PER_SECOND), rows, config))
        graphs[sweep] = counter.frame_count - before
    row = {
        "entry": "CTCDecoder(compile=True): GraniteSpeech5.greedy_ids, fullgraph, batch and "
        "frames symbolic",
        "backend": "eager (counting)",
        "lengths_s": list(CENSUS_SECONDS),
        "second_lengths_s": list(SECOND_SECONDS),
        "batches": list(batches),
        "requests": 2 * len(batches) * len(CENSUS_SECONDS),
        "graphs_sweep": graphs["sweep"],
        "graphs_second": graphs["second"],
        "predicted_graphs": len(classes),
        "graph_breaks": explained.graph_break_count,
        "graphs_one_request": explained.graph_count,
    }
    ev = {f"census_{k}": row[k] for k in ("graphs_sweep", "graphs_second", "predicted_graphs")}
    ev["census_graph_breaks"] = row["graph_breaks"]
    return row, ev


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device, dtype = harness.device_of(args), harness.dtype_of(args)
    batches = QUICK_BATCHES if args.quick else BATCHES
    census_batches = QUICK_CENSUS_BATCHES if args.quick else CENSUS_BATCHES
    scope = harness.scope_of(device, "tiny" if args.model == "tiny-ctc" else args.model)
    weights = "built-in tiny-ctc variant" if args.model == "tiny-ctc" else args.model
    run = harness.Run(
        "bench_ctc", scope, args, model=f"{weights} (random weights, {harness.dtype_name(dtype)})"
    )
    # Expected seconds (measured on this 2-core machine under other jobs' load): the first
    # batch of one row and the first of more each compile a graph with Inductor.
    expected = {1: 170, 2: 190, 8: 190, 32: 80, 128: 300}
    steps = {"models": 10, **{f"batch_{b}": expected[b] for b in batches}, "census": 240}
    progress = harness.Progress("bench_ctc", steps)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="bench_ctc-") as tmp:
        harness.compile_cache(args, Path(tmp) / "inductor")  # default: cold compiles
        hf, fm, tokenizer = build(args.model, device, dtype, Path(tmp))
        progress.done("models")
        rows, ev = throughput(hf, fm, tokenizer, device, batches, progress)
    census_row, census_ev = census(fm.float().cpu(), census_batches)
    progress.done("census")
    ev.update(census_ev)
    not_measured = {}
    if device.type != "cuda":
        not_measured["gpu"] = "no GPU was lent to this work; the CPU run is the built-in variant"
    run.write(
        what=f"RTFx, {AUDIO_S:g} s clips of speech, waveforms to text; graphs over lengths x "
        "batches",
        sweep=f"{AUDIO_S:g}s, batches {list(batches)}",
        rows=rows,
        census=census_row,
        evidence=ev,
        not_measured=not_measured,
        headline=HEADLINE,
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
