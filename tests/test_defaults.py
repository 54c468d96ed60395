"""One default schedule for every way in: HarmonizeConfig(), the commands, Harmonizer, harmonize(),
run_iteration, trace_attention and the method comparison all start from the same configuration."""

import numpy as np
import pytest

import zsharm.edit.inversion
import zsharm.edit.iteration
import zsharm.harmonizer
from zsharm.commands.cli import build_parser
from zsharm.config import DEFAULT_SCHEDULE, HarmonizeConfig
from zsharm.commands.options import config_from_options

DEFAULT = HarmonizeConfig.named(DEFAULT_SCHEDULE)


class Seen(Exception):
    """Raised by a stand-in stage to stop the run once the configuration it was given is recorded."""


def recorder(seen):
    def record(*args, **kwargs):
        config = kwargs.get("config") or next(a for a in args if isinstance(a, HarmonizeConfig))
        seen.append(config)
        raise Seen
    return record


@pytest.fixture
def composite():
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    return image, mask


def test_the_dataclass_defaults_are_the_default_schedule():
    assert HarmonizeConfig() == DEFAULT and DEFAULT.schedule == DEFAULT_SCHEDULE
    assert HarmonizeConfig.paper() != DEFAULT


@pytest.mark.parametrize("argv", [
    ["harmonize", "in.png", "--mask", "m.png", "--out", "o.png"],
    ["evaluate", "data", "--out", "eval"],
    ["figures"],
])
def test_every_command_defaults_to_the_same_schedule(argv):
    assert config_from_options(build_parser().parse_args(argv)) == DEFAULT


def test_harmonizer_and_harmonize_default_to_the_same_schedule(monkeypatch, composite):
    import zsharm.models
    monkeypatch.setattr(zsharm.models, "prepare_pipeline", lambda pipe: pipe)
    harmonizer = zsharm.harmonizer.Harmonizer(pipe=object(), evaluator=None)
    assert harmonizer.config == DEFAULT
    seen = []
    monkeypatch.setattr(zsharm.edit.iteration, "iterate_at_work_size", recorder(seen))
    with pytest.raises(Seen):
        zsharm.harmonizer.harmonize(*composite, "cat bright", "cat dull", pipe=object(), evaluator=None)
    assert seen == [DEFAULT]


def test_run_iteration_defaults_to_the_same_schedule(monkeypatch, composite):
    seen = []
    monkeypatch.setattr(zsharm.edit.iteration, "prepare_pipeline", lambda pipe: pipe)
    monkeypatch.setattr(zsharm.edit.iteration, "iterate_at_work_size", recorder(seen))
    with pytest.raises(Seen):
        zsharm.edit.iteration.run_iteration(object(), *composite, "cat bright", "cat dull")
    assert seen == [DEFAULT]


def test_trace_attention_defaults_to_the_same_schedule(monkeypatch, composite):
    from PIL import Image

    from zsharm.teaching.trace import trace_attention
    seen = []

    def invert(run, *args):
        seen.append(run.config)
        raise Seen
    monkeypatch.setattr(zsharm.edit.inversion, "ddim_invert", invert)
    with pytest.raises(Seen):
        trace_attention(object(), Image.fromarray(composite[0]), "cat bright")
    assert seen == [DEFAULT]


def test_the_method_comparison_defaults_to_the_same_schedule(monkeypatch, composite):
    import zsharm.models
    from zsharm.harmonizer import zsharm_method
    seen = []
    monkeypatch.setattr(zsharm.models, "load_pipeline", lambda *a, **k: object())
    monkeypatch.setattr(zsharm.models, "prepare_pipeline", lambda pipe: pipe)
    monkeypatch.setattr(zsharm.edit.iteration, "iterate_at_work_size", recorder(seen))
    run = zsharm_method("tiny", source="cat bright", target="cat dull")
    with pytest.raises(Seen):
        run(*composite)
    assert seen == [DEFAULT]
