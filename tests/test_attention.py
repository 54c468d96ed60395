"""Attention control through diffusers processors: maps, replacement, restoration."""

import torch

from zsharm.edit.attention import AttentionReplace, AttentionStore, controlled_attention
from zsharm.edit.diffusion import Run, text_embeddings
from zsharm.config import HarmonizeConfig


def unet_inputs(pipe, batch, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, size, size, generator=g)
    run = Run(pipe=pipe, config=HarmonizeConfig())
    with torch.no_grad():
        prompts = ["", "", "cat bright", "cat winter"][:batch] if batch == 4 else ["cat bright"] * batch
        context = text_embeddings(run, "test", prompts)
    return latents, context


def test_maps_have_the_right_shapes_and_sum_to_one(tiny_pipe):
    latents, context = unet_inputs(tiny_pipe, 2)
    store = AttentionStore(num_pixels=(8 * 8, 4 * 4), places=("down", "mid", "up"), self_attn=True)
    with torch.no_grad(), controlled_attention(tiny_pipe.unet, store):
        tiny_pipe.unet(latents, 501, encoder_hidden_states=context)
    store.step()
    cross = store.aggregate((4, 4), row=0)  # latent 16 -> the image/32 level is 4x4
    assert cross.shape == (4, 4, 77)
    assert torch.allclose(cross.sum(-1), torch.ones(4, 4), atol=1e-5)
    selfmap = store.aggregate((8, 8), row=0, is_cross=False)
    assert selfmap.shape == (8, 8, 64)
    assert torch.allclose(selfmap.sum(-1), torch.ones(8, 8), atol=1e-5)
    # conditional rows only: one row kept per prompt of the batch's second half
    assert all(m.shape[0] == 1 for maps in store.maps.values() for m in maps)


def test_processors_are_restored_and_output_unchanged(tiny_pipe):
    latents, context = unet_inputs(tiny_pipe, 2)
    before = {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()}
    with torch.no_grad():
        reference = tiny_pipe.unet(latents, 301, encoder_hidden_states=context).sample
        try:
            with controlled_attention(tiny_pipe.unet, AttentionReplace(10, 10)):
                edited = tiny_pipe.unet(torch.cat([latents] * 2), 301,
                                        encoder_hidden_states=torch.cat([context] * 2)).sample
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        after = tiny_pipe.unet(latents, 301, encoder_hidden_states=context).sample
    assert {k: type(v) for k, v in tiny_pipe.unet.attn_processors.items()} == before
    assert torch.equal(reference, after)
    assert edited.shape[0] == 4


def test_replacement_gives_the_target_the_source_maps(tiny_pipe):
    latents, context = unet_inputs(tiny_pipe, 4)
    x = torch.cat([latents[:2]] * 2)  # two branches [src, tgt], uncond then cond
    store = AttentionStore(num_pixels=(4 * 4,), places=("down", "up"), self_attn=True)
    with torch.no_grad(), controlled_attention(tiny_pipe.unet, AttentionReplace(10, 10, store=store)):
        tiny_pipe.unet(x, 501, encoder_hidden_states=context)
    # the store sees maps before replacement; after it the target row must carry the source's.
    # Check through the output instead: with identical latents and prompts for both branches nothing changes,
    # with different prompts the target's output differs from the unreplaced run.
    with torch.no_grad():
        plain = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
        with controlled_attention(tiny_pipe.unet, AttentionReplace(10, 10)):
            replaced = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
    assert torch.allclose(plain[:3], replaced[:3], atol=1e-5)  # unconditional rows and the source untouched
    assert not torch.allclose(plain[3], replaced[3], atol=1e-5)


def test_fused_replacement_equals_materialised(tiny_pipe):
    latents, context = unet_inputs(tiny_pipe, 4)
    x = torch.cat([latents[:2]] * 2)
    with torch.no_grad():
        with controlled_attention(tiny_pipe.unet, AttentionReplace(10, 10), fused=False):
            slow = tiny_pipe.unet(x, 701, encoder_hidden_states=context).sample
        with controlled_attention(tiny_pipe.unet, AttentionReplace(10, 10), fused=True):
            fast = tiny_pipe.unet(x, 701, encoder_hidden_states=context).sample
    assert torch.allclose(slow, fast, atol=1e-5), float((slow - fast).abs().max())


def test_replacement_stops_after_its_steps(tiny_pipe):
    latents, context = unet_inputs(tiny_pipe, 4)
    x = torch.cat([latents[:2]] * 2)
    controller = AttentionReplace(cross_steps=1, self_steps=1)
    with torch.no_grad():
        plain = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
        with controlled_attention(tiny_pipe.unet, controller):
            first = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
            controller.step()
            second = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
    assert not torch.allclose(first[3], plain[3], atol=1e-5)
    assert torch.allclose(second, plain, atol=1e-5)
