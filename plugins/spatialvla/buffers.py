"""Non-persistent buffers after a meta-device build.

`from_pretrained` builds the model on the meta device (billions of parameters are not randomly
initialised only to be overwritten) and assigns the checkpoint's tensors. Buffers that are not in
the checkpoint — computed from the config in each module's constructor — stay on meta; each is
recomputed here by the same rule. Anything left on meta afterwards is an error naming it, so a
transformers release that adds a buffer is caught by the fixture test rather than at inference.
"""
from __future__ import annotations

import torch
from torch import nn


def rebuild_meta_buffers(model: nn.Module) -> None:
    from transformers.models.gemma2.modeling_gemma2 import (Gemma2RotaryEmbedding,
        Gemma2TextScaledWordEmbedding)
    from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings
    from transformers.models.zoedepth.modeling_zoedepth import LogBinomialSoftmax

    from .depth import patch_pixel_grid

    config = model.config
    if getattr(model, "uv_h", None) is not None and model.uv_h.is_meta:
        model.uv_h = patch_pixel_grid(config.image_size, config.patch_size, config.ego3d_patch_reso)
    for name, module in list(model.named_modules()):
        if isinstance(module, Gemma2RotaryEmbedding) and module.inv_freq.is_meta:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, Gemma2RotaryEmbedding(config=module.config))
        elif isinstance(module, Gemma2TextScaledWordEmbedding) and module.embed_scale.is_meta:
            module.embed_scale = torch.tensor(module.scalar_embed_scale)
        elif isinstance(module, SiglipVisionEmbeddings) and module.position_ids.is_meta:
            module.position_ids = torch.arange(module.num_positions).expand((1, -1))
        elif isinstance(module, LogBinomialSoftmax) and module.k_idx.is_meta:
            module.k_idx = torch.arange(0, module.k).view(1, -1, 1, 1)
            module.k_minus_1 = torch.tensor([module.k - 1]).view(1, -1, 1, 1)
        elif callable(getattr(module, "rebuild_meta_buffers", None)):  # our own modules know their buffers
            module.rebuild_meta_buffers()
    left = [
        f"{prefix}.{name}".lstrip(".")
        for prefix, module in model.named_modules()
        for name, tensor in list(module.named_parameters(recurse=False))
        + list(module.named_buffers(recurse=False))
        if tensor.is_meta
    ]
    if left:
        raise RuntimeError(f"{len(left)} tensors were not loaded nor rebuilt after the meta-device build "
                           f"(first: {left[0]}); this transformers release adds state refine does not know")
