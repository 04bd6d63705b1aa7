"""The architecture registry: one dispatcher (class hierarchy) for recording, editing and the dashboard."""

from __future__ import annotations

import pytest
import torch

from latentlens import record
from latentlens.adapters import adapter_for, edit_model_for, site_width
from latentlens.adapters.flux import FluxEditModel
from latentlens.adapters.sd3 import SD3Adapter, SD3EditModel
from latentlens.editor.model import EditModel
from latentlens.testing import tiny_sd3_pipeline
from latentlens.text import changed_tokens, word_token_indices


def _meta_transformer(cls_name: str, **config):
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config)


def test_pooled_text_width_is_not_the_joint_width():
    """text.pooled on SD3 is 2048 wide (joint 4096), on Flux 768 (joint 4096): the editor must not assume one width."""
    sd3 = _meta_transformer("SD3Transformer2DModel", num_layers=1, attention_head_dim=64, num_attention_heads=24,
                            joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                            sample_size=32, pos_embed_max_size=32)
    flux = _meta_transformer("FluxTransformer2DModel", num_layers=1, num_single_layers=1, attention_head_dim=128,
                             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768)
    assert (site_width(sd3, "text.pooled"), site_width(sd3, "text.tokens")) == (2048, 4096)
    assert (site_width(flux, "text.pooled"), site_width(flux, "text.tokens")) == (768, 4096)
    assert site_width(sd3, "blocks.0.resid_out.txt") == site_width(sd3, "blocks.0.resid_out.img") == 1536
    assert site_width(sd3, "blocks.0.attn.img2txt") is None and site_width(sd3, "latents") is None


def test_subclassed_transformer_is_recorded_and_edited_like_its_parent():
    pipe = tiny_sd3_pipeline()
    base_cls = type(pipe.transformer)
    pipe.transformer.__class__ = type("MySD3Transformer", (base_cls,), {})
    try:
        assert isinstance(adapter_for(pipe), SD3Adapter)
        model = EditModel.wrap(pipe, num_inference_steps=2, max_sequence_length=8)
        assert type(model) is SD3EditModel and type(edit_model_for(pipe)) is SD3EditModel
        with record(pipe, sites="blocks.0.resid_out.img") as rec:
            pipe("a red circle", num_inference_steps=1, max_sequence_length=8, output_type="np")
        assert rec["blocks.0.resid_out.img"].shape[0] == 1
    finally:
        pipe.transformer.__class__ = base_cls


def test_recorder_and_editor_read_the_same_text_segments():
    """One table: the word positions the recorder finds are the positions the editor's diff marks."""
    pipe = tiny_sd3_pipeline()
    model = EditModel.wrap(pipe, max_sequence_length=8)
    segments = adapter_for(pipe).text_segments(8)
    assert [(s.offset, s.length) for s in segments] == [(o, n) for _, o, n in model.tokenizers()]
    source, target = "a red circle", "a blue circle"
    src, tgt = changed_tokens(model, source, target)
    assert src == word_token_indices(pipe, "red", source) and tgt == word_token_indices(pipe, "blue", target)


def test_an_unsupported_pipeline_is_refused_with_the_supported_list():
    from latentlens.adapters import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel"):
        adapter_for(torch.nn.Linear(2, 2))


def test_every_architecture_names_its_edit_model():
    from latentlens.adapters import ADAPTERS

    for adapter_cls in ADAPTERS:
        assert adapter_cls.edit_model is not None and adapter_cls.edit_model.adapter_class is adapter_cls
    assert FluxEditModel.adapter_class is not None
