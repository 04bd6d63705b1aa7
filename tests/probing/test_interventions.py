"""steer and patch: α=0 is a no-op; they change exactly the claimed site, steps and tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentlens import patch, record, site_names, steer
from latentlens.errors import ConfigError, UnknownNameError
from latentlens.names import is_map
from probing_ref import get_pipe, hook_counts, run_pipe


class FakeDirection:
    def __init__(self, vector, site, steps=None, tokens=None):
        self.vector, self.site, self.steps, self.tokens, self.provenance = vector, site, steps, tokens, {}


def test_steer_alpha_zero_is_bit_identical(kind):
    pipe = get_pipe(kind)
    before = hook_counts(pipe.transformer)
    ref = run_pipe(pipe, kind)
    cfg = pipe.transformer.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    with steer(pipe, "blocks.0.resid_out.img", torch.randn(dim), alpha=0.0):
        out = run_pipe(pipe, kind)
    assert np.array_equal(ref, out)
    with steer(pipe, "blocks.0.resid_out.img", torch.randn(dim), alpha=3.0):
        moved = run_pipe(pipe, kind)
    assert not np.array_equal(ref, moved)
    assert hook_counts(pipe.transformer) == before


def test_steer_changes_exactly_the_site_steps_and_tokens():
    pipe = get_pipe("sd3")
    names = [n for n in site_names(pipe) if not is_map(n)]
    d = torch.randn(16)
    alpha = 2.5
    with record(pipe, sites=names, cfg="both") as base:
        run_pipe(pipe, "sd3")
    with steer(pipe, FakeDirection(d, "blocks.0.resid_out.img", steps=[1], tokens=[2, 5]), alpha=alpha) as s:
        with record(pipe, sites=names, cfg="both") as rec:
            run_pipe(pipe, "sd3")
    assert s.calls == 1
    site = "blocks.0.resid_out.img"
    # step 0 untouched everywhere
    for n in names:
        assert torch.equal(rec[n][0], base[n][0]), n
    # step 1: the site moved by exactly alpha*d at tokens 2 and 5 of every row, nothing else there
    expected = base[site][1].clone()
    expected[:, [2, 5]] = base[site][1][:, [2, 5]] + alpha * d
    assert torch.equal(rec[site][1], expected)
    # upstream of the site (same block) unchanged; the next block reads the steered value
    for n in ["latents", "text.tokens", "blocks.0.resid_in.img", "blocks.0.attn_out.img", "blocks.0.ff_out.txt",
              "blocks.0.resid_out.txt", "blocks.0.mod"]:
        assert torch.equal(rec[n][1], base[n][1]), n
    assert torch.equal(rec["blocks.1.resid_in.img"][1], expected)
    assert not torch.equal(rec["blocks.1.resid_out.img"][1], base["blocks.1.resid_out.img"][1])


def test_token_wise_direction_adds_one_row_per_token_and_refuses_a_wrong_row_count():
    pipe = get_pipe("sd3")
    site = "blocks.0.resid_out.img"
    with record(pipe, sites=site, cfg="both") as base:
        run_pipe(pipe, "sd3")
    tokens = base[site].shape[2]
    rows = torch.randn(tokens, 16)  # [tokens, channel]
    with steer(pipe, FakeDirection(rows, site, steps=[0]), alpha=0.5):
        with record(pipe, sites=site, cfg="both") as rec:
            run_pipe(pipe, "sd3")
    assert torch.equal(rec[site][0], base[site][0] + 0.5 * rows)
    picked = torch.randn(2, 16)  # rows for tokens 1 and 3 only
    with steer(pipe, FakeDirection(picked, site, steps=[0], tokens=[1, 3]), alpha=1.0):
        with record(pipe, sites=site, cfg="both") as rec:
            run_pipe(pipe, "sd3")
    expected = base[site][0].clone()
    expected[:, [1, 3]] += picked
    assert torch.equal(rec[site][0], expected)
    with pytest.raises(ConfigError, match=f"has {tokens + 1} rows but site 'blocks.0.resid_out.img' has {tokens} tokens"):
        with steer(pipe, FakeDirection(torch.randn(tokens + 1, 16), site), alpha=1.0):
            run_pipe(pipe, "sd3")


def test_steer_flux_single_block_text_part_by_alias():
    pipe = get_pipe("flux")
    d = torch.randn(32)
    with record(pipe, sites="blocks.2.attn_out.*") as base:
        run_pipe(pipe, "flux")
    with steer(pipe, "single_blocks.0.attn_out.txt", d, alpha=1.0, steps=[1], tokens=[0]):
        with record(pipe, sites="blocks.2.attn_out.*") as rec:
            run_pipe(pipe, "flux")
    exp = base["blocks.2.attn_out.txt"].clone()
    exp[1, :, 0] += d  # step 1 only (a change at step 0 would propagate to later steps)
    assert torch.equal(rec["blocks.2.attn_out.txt"], exp)
    assert torch.equal(rec["blocks.2.attn_out.img"], base["blocks.2.attn_out.img"])


def test_patch_with_own_recording_is_a_no_op_and_from_another_prompt_copies_it(kind):
    pipe = get_pipe(kind)
    site = "blocks.1.resid_out.img"
    with record(pipe, sites=[site, "pred"]) as own:
        ref = run_pipe(pipe, kind, prompt="a red circle")
    with patch(pipe, site, own):
        same = run_pipe(pipe, kind, prompt="a red circle")
    assert np.array_equal(ref, same)
    with record(pipe, sites=[site]) as donor:
        run_pipe(pipe, kind, prompt="a blue square on the left")
    with patch(pipe, site, donor, steps=[1]):
        with record(pipe, sites=[site]) as rec:
            run_pipe(pipe, kind, prompt="a red circle")
    assert torch.equal(rec[site][1], donor[site][1])
    assert torch.equal(rec[site][0], own[site][0])
    # a plain tensor [step, batch, tokens, dim] works too
    with patch(pipe, site, donor[site]):
        with record(pipe, sites=[site]) as rec2:
            run_pipe(pipe, kind, prompt="a red circle")
    assert torch.equal(rec2[site], donor[site])


def test_intervention_errors():
    pipe = get_pipe("sd3")
    with pytest.raises(UnknownNameError, match="blocks.0.resid_out.img"):
        steer(pipe, "blocks.0.resid_out.imag", torch.zeros(16))
    with pytest.raises(ConfigError, match="read-only"):
        steer(pipe, "blocks.0.mod", torch.zeros(16))
    with pytest.raises(ConfigError, match="channels"):
        with steer(pipe, "blocks.0.resid_out.img", torch.zeros(7)):
            run_pipe(pipe, "sd3")
    with record(pipe, sites="blocks.0.resid_out.img") as rec:
        run_pipe(pipe, "sd3")
    with pytest.raises(ConfigError, match="holds no"):
        patch(pipe, "blocks.0.resid_out.txt", rec)


def test_steer_transformer_input_site_at_one_step():
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer()
    inputs = sd3_inputs(model, text_tokens=4)
    d = torch.randn(32)
    with torch.no_grad():
        with steer(model, "text.tokens", d, alpha=1.0, steps=[1], tokens=[3]):
            with record(model, sites=["text.tokens", "blocks.0.resid_in.txt"]) as rec:
                for _ in range(3):
                    model(**inputs)
    x = rec["text.tokens"]
    assert torch.equal(x[0], inputs["encoder_hidden_states"]) and torch.equal(x[2], inputs["encoder_hidden_states"])
    exp = inputs["encoder_hidden_states"].clone()
    exp[:, 3] += d
    assert torch.equal(x[1], exp)
    assert torch.equal(rec["blocks.0.resid_in.txt"][0], rec["blocks.0.resid_in.txt"][2])
    assert not torch.equal(rec["blocks.0.resid_in.txt"][1], rec["blocks.0.resid_in.txt"][0])
