"""LLaVA-NeXT-Interleave: one model for multi-image, video, 3D multi-view and multi-patch inputs.

    import llava_interleave
    pipe = llava_interleave.load("path/to/checkpoint")          # hf or original layout
    pipe.generate("What changed?", images=["a.png", "b.png"]).text
"""

from .api import Generation, Pipeline, load
from .config import InterleaveConfig, ProcessorConfig, TextConfig, VisionConfig
from .engine import SamplingConfig

__all__ = ["Generation", "InterleaveConfig", "Pipeline", "ProcessorConfig", "SamplingConfig", "TextConfig", "VisionConfig",
           "load"]
