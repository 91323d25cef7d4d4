"""Granite Speech in IBM's Foundation Model Stack.

Importing this package registers the Granite Speech architecture (variants `3.3-2b`, `3.3-8b`,
`tiny`), its Hugging Face checkpoint adapter and the `hf_pretrained` config mapping of Granite
Speech and Granite Speech Plus checkpoints with FMS, and the same for Granite Speech 5.0
(architecture "granite_speech5", variants `5.0-470m`, `tiny-ctc`). `ARCHITECTURE` is the FMS
architecture name of 3.x it registers: "granite_speech", or "granite_speech_fms" where the
installed FMS ships its own "granite_speech" (then `get_model("granite_speech", ...)` builds
FMS's model, while `get_model(ARCHITECTURE, ...)` and `get_model("hf_pretrained", ...)` build
this package's).
"""

from granite_fms.hf import fms_config_from_hf, load_model
from granite_fms.models.conformer import ConformerConfig, ConformerEncoder
from granite_fms.models.granite_speech import ARCHITECTURE, GraniteSpeech, GraniteSpeechConfig
from granite_fms.models.granite_speech5 import GraniteSpeech5, GraniteSpeech5Config
from granite_fms.models.qformer import QFormerConfig, QFormerProjector
from granite_fms.pipeline import SpeechPipeline

__all__ = [
    "ARCHITECTURE",
    "ConformerConfig",
    "ConformerEncoder",
    "GraniteSpeech",
    "GraniteSpeech5",
    "GraniteSpeech5Config",
    "GraniteSpeechConfig",
    "QFormerConfig",
    "QFormerProjector",
    "SpeechPipeline",
    "fms_config_from_hf",
    "load_model",
]
