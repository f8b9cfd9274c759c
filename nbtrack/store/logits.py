"""A Hugging Face model served by its logits: pyfunc cannot return a ``ModelOutput``.

Imported only when such a model is saved (it imports torch). The wrapper class is pickled by
value with the model, so loading it needs neither nbtrack nor this module.
"""

from __future__ import annotations

import sys

import cloudpickle
import torch


class LogitsOf(torch.nn.Module):
    """``model(input_ids)`` as a tensor: the logits of the wrapped model's output."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, *args, **kwargs):
        """The wrapped model's logits for ``input_ids``."""
        if input_ids.dtype.is_floating_point:  # pyfunc hands over what the signature said
            input_ids = input_ids.long()
        return self.model(input_ids, *args, **kwargs).logits


def logits_of(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped to return its logits, its wrapper to be pickled by value."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return LogitsOf(model)
