"""What every pipeline is: a model and its processor, whose tokenizer is optional."""

import torch


class ModelPipeline:
    """The accessors `SpeechPipeline` and `CTCPipeline` share; each has `model` and
    `processor` fields, and its model a `device` and a `dtype`."""

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


__all__ = ["ModelPipeline"]
