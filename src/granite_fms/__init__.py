"""Granite Speech in IBM's Foundation Model Stack.

Importing this package registers the `granite_speech` architecture (variants `3.3-2b`, `3.3-8b`,
`tiny`), its Hugging Face checkpoint adapter and the `hf_pretrained` config mapping with FMS.
"""

from granite_fms.checkpoint import fms_config_from_hf, load_model
from granite_fms.conformer import ConformerConfig, ConformerEncoder
from granite_fms.granite_speech import GraniteSpeech, GraniteSpeechConfig
from granite_fms.pipeline import SpeechPipeline
from granite_fms.qformer import QFormerConfig, QFormerProjector

__all__ = [
    "ConformerConfig",
    "ConformerEncoder",
    "GraniteSpeech",
    "GraniteSpeechConfig",
    "QFormerConfig",
    "QFormerProjector",
    "SpeechPipeline",
    "fms_config_from_hf",
    "load_model",
]
