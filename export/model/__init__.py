"""PyTorch SegVol whose parameter names are the released checkpoints' keys.

``segvol.py`` assembles ``image_encoder.py`` (3D ViT), ``text_encoder.py``
(CLIP text tower), ``prompt_encoder.py`` and ``mask_decoder.py``.
"""

from segvol_rt.export.model.segvol import SegVol, prompt_tokens

__all__ = ["SegVol", "prompt_tokens"]
