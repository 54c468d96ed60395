"""The arithmetic switch: `paper` computes the authors' numbers on CPU, and the same steps, inner iterations and
losses in half precision with fused attention on a GPU; fp16 gradients go through loss scaling."""

import numpy as np
import pytest
import torch

from conftest import make_composite
from zsharm.config import HarmonizeConfig
from zsharm.repro.speed import model_counts, schedule_counts
from zsharm.edit.diffusion import CallCounter, optimizer_step, Run
from zsharm.edit.iteration import run_iteration
from zsharm.models import load_pipeline

PROMPTS = ("cat bright", "cat winter dull")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_auto_arithmetic_is_the_authors_for_paper_on_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    paper, fast = HarmonizeConfig.paper(), HarmonizeConfig.fast()
    assert paper.runs_authors_arithmetic(cpu) and not paper.runs_authors_arithmetic(cuda)
    assert not fast.runs_authors_arithmetic(cpu) and not fast.runs_authors_arithmetic(cuda)
    assert paper.torch_dtype(cpu) == torch.float32
    assert paper.torch_dtype(cuda) is None  # the loader's GPU default, fp16
    assert HarmonizeConfig.paper(arithmetic="authors").torch_dtype(cuda) == torch.float32
    assert HarmonizeConfig.paper(arithmetic="fast").torch_dtype(cpu) is None
    assert HarmonizeConfig.paper(dtype="bf16").torch_dtype(cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="arithmetic"):
        HarmonizeConfig.paper(arithmetic="exact")
    with pytest.raises(ValueError, match="dtype"):
        HarmonizeConfig.fast(dtype="half")


def test_run_fuses_attention_only_outside_the_authors_arithmetic(tiny_pipe):
    assert not Run(pipe=tiny_pipe, config=HarmonizeConfig.paper()).fused
    assert Run(pipe=tiny_pipe, config=HarmonizeConfig.paper(arithmetic="fast")).fused
    assert not Run(pipe=tiny_pipe, config=HarmonizeConfig.paper(arithmetic="fast", fused_attention=False)).fused
    assert Run(pipe=tiny_pipe, config=HarmonizeConfig.fast()).fused


def _adam(values):
    p = torch.nn.Parameter(torch.tensor(values))
    return p, torch.optim.AdamW([p], lr=0.1)


def test_optimizer_step_without_scaling_is_a_plain_step():
    a, opt_a = _adam([1.0, -2.0, 3.0])
    b, opt_b = _adam([1.0, -2.0, 3.0])
    for _ in range(3):
        opt_a.zero_grad()
        (a ** 2).sum().backward()
        opt_a.step()
        assert optimizer_step(torch.amp.GradScaler("cpu", enabled=False), opt_b, lambda again: (b ** 2).sum()) == 0
    assert torch.equal(a, b)


def test_scaled_step_repeats_an_overflowing_backward_instead_of_skipping_it():
    # d/dp of 60000 * p, computed in fp16, overflows once scaled by 2 or more: the step must still be taken, at
    # a scale of 1, and be the step an unscaled fp32 optimiser takes
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    p, opt = _adam([1.0, 2.0])
    reference, opt_ref = _adam([1.0, 2.0])
    counter = CallCounter()

    def loss(again):
        counter.add("test", "forward")
        return (p.half() * 60000).float().sum()

    retries = optimizer_step(scaler, opt, loss, counter)
    opt_ref.zero_grad()
    (reference * 60000).sum().backward()
    opt_ref.step()
    assert retries == 10 and scaler.get_scale() == 1.0
    # the forward was computed again for each retry, and counted apart from the schedule's own calls
    assert counter.table() == {"test/forward/nograd": 1, "test/forward_recomputed/nograd": 10}
    assert torch.allclose(p, reference)
    # a gradient below fp16's smallest subnormal (6e-8) survives the way back only because it is scaled up
    q, opt_q = _adam([1.0, 2.0])
    assert optimizer_step(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10), opt_q, lambda again: (q.half() * 1e-8).float().sum()) == 0
    assert torch.allclose(q.grad, torch.full((2,), 1e-8), rtol=0.05)
    q2, opt_q2 = _adam([1.0, 2.0])
    optimizer_step(torch.amp.GradScaler("cpu", enabled=False), opt_q2, lambda again: (q2.half() * 1e-8).float().sum())
    assert torch.equal(q2.grad, torch.zeros(2))  # unscaled, the gradient underflowed to zero


def test_scaled_step_gives_up_with_a_one_line_error():
    from zsharm.errors import ZsharmError
    p, opt = _adam([1.0, 2.0])
    with pytest.raises(ZsharmError, match="overflow in half precision"):
        optimizer_step(torch.amp.GradScaler("cpu"), opt, lambda again: (p.half() * 60000).float().sum() * 1e30)


@pytest.mark.parametrize("dtype, mean_levels, max_levels", [(torch.float32, 0.3, 2), (torch.float16, 1.0, 6)])
def test_paper_with_fast_arithmetic_keeps_counts_and_lands_near_the_authors(random_edges, dtype, mean_levels,
                                                                            max_levels):
    # Same schedule, other arithmetic: every count is equal and, on the tamed model (whose picture follows the
    # DDIM trajectory rather than a random UNet), the edit stays within ~0.1 grey levels (fp32, fused
    # attention) or ~0.5 (fp16) of the authors' arithmetic; the background is untouched either way.
    image, mask = make_composite(64, 64)
    out = {}
    for name, arithmetic, model_dtype in (("authors", "authors", torch.float32), ("fast", "fast", dtype)):
        pipe = load_pipeline("tiny-tamed", device="cpu", dtype=model_dtype)
        cfg = HarmonizeConfig.paper(steps=10, size=64, arithmetic=arithmetic)
        res = run_iteration(pipe, image, mask, *PROMPTS, cfg, progress=False, pidinet=random_edges)
        out[name] = res
    a, f = (np.asarray(out[k].work_image, float) for k in ("authors", "fast"))
    assert model_counts(out["fast"].counts) == model_counts(out["authors"].counts) == schedule_counts(cfg)
    recomputed = out["fast"].counts.total("unet_recomputed")
    retries = sum(r.get("scale_retries", 0) for r in out["fast"].nulltext.losses + out["fast"].refinement.losses)
    assert recomputed == retries and (retries > 0) == (dtype == torch.float16)  # fp16 refinement overflows at 1024
    diff = np.abs(f - a)[res.mask_work]
    assert diff.mean() < mean_levels and diff.max() <= max_levels
    assert np.array_equal(f[~res.mask_work], a[~res.mask_work])
    records = out["fast"].nulltext.losses + out["fast"].refinement.losses
    assert len(records) == len(out["authors"].nulltext.losses + out["authors"].refinement.losses)


def test_harmonize_command_takes_the_arithmetic():
    from zsharm.commands.cli import build_parser
    from zsharm.commands.options import config_from_options
    args = build_parser().parse_args(["harmonize", "in.png", "--mask", "m.png", "--out", "o.png", "--schedule", "paper",
                                      "--arithmetic", "fast", "--dtype", "fp32"])
    config = config_from_options(args)
    assert (config.schedule, config.arithmetic, config.dtype) == ("paper", "fast", "fp32")
    assert not config.runs_authors_arithmetic(torch.device("cpu")) and config.torch_dtype("cpu") == torch.float32
    config = config_from_options(build_parser().parse_args(["harmonize", "in.png", "--out", "o.png", "--schedule", "paper"]))
    assert config.arithmetic == "auto" and config.runs_authors_arithmetic(torch.device("cpu"))
