#!/usr/bin/env bash
# Regenerate the speech fixtures used by tests/test_features.py.
# Needs espeak-ng and sox (apt-get install -y espeak-ng sox). Output is deterministic for a
# given espeak-ng/sox version; the committed files are the reference, so only rerun this to
# replace them on purpose.
#
# Exact lengths at 16 kHz; encoder frames = (n // 160 + 1) // 2:
#   fox_16k.wav      38400 samples (2.4 s):   241 mel frames (odd) -> 120 encoder frames = 8 * 15
#   short_16k.wav    19500 samples (~1.22 s): 122 mel frames       ->  61 encoder frames
#   long_16k.wav     72333 samples (~4.52 s): 453 mel frames (odd) -> 226 encoder frames
#                    (61 and 226 are multiples of neither 15 nor 200)
#   short_22k.wav    the short sentence at 22050 Hz, 26874 samples (~1.22 s), to test resampling
#   fox_stereo.flac  38400 frames, 2 channels: left = fox_16k.wav, right = the same sentence in
#                    a different voice, to test the downmix
# manifest.jsonl (written by hand, not by this script): a NeMo manifest of these clips with
# their sentences, capitalised and punctuated, as references (`nox -s eval`'s default).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -D: no dither, so reruns give identical samples. -V1: trim cutting the pad short is expected.
to16k() {  # to16k IN OUT NUM_SAMPLES
    sox -V1 -D "$1" -r 16000 -c 1 -b 16 "$2" rate -v 16k pad 0 5 trim 0 "$3"s
}

espeak-ng -v en-us -s 220 -w "$tmp/fox.wav" "the quick brown fox jumps over the lazy dog"
espeak-ng -v en-us+f3 -s 220 -w "$tmp/fox_f.wav" "the quick brown fox jumps over the lazy dog"
espeak-ng -v en-us -s 230 -w "$tmp/short.wav" "hello world, testing"
espeak-ng -v en-us -s 210 -w "$tmp/long.wav" \
    "speech recognition turns spoken words into text, one short audio clip at a time"

to16k "$tmp/fox.wav" fox_16k.wav 38400
to16k "$tmp/short.wav" short_16k.wav 19500
to16k "$tmp/long.wav" long_16k.wav 72333
sox -V1 -D "$tmp/short.wav" -r 22050 -c 1 -b 16 short_22k.wav pad 0 5 trim 0 26874s

to16k "$tmp/fox_f.wav" "$tmp/fox_f_16k.wav" 38400
sox -V1 -D -M fox_16k.wav "$tmp/fox_f_16k.wav" fox_stereo.flac

soxi -s fox_16k.wav short_16k.wav long_16k.wav short_22k.wav fox_stereo.flac
