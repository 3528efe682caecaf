"""The model: vision tower, projector, anyres, pooling, arrange, merge, language model, checkpoint layouts."""

from .llava import LlavaInterleave

__all__ = ["LlavaInterleave"]
