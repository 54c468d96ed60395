"""The toy world's renderer: deterministic, its words the method's, its light directional, its composites
iHarmony4's construction."""

import numpy as np
import pytest

from zsharm.toy import world
from zsharm.vocabulary import LIST_OF


def test_a_scene_is_a_function_of_its_seed():
    a, b = world.make_composite(123), world.make_composite(123)
    assert np.array_equal(a.composite, b.composite) and np.array_equal(a.truth, b.truth)
    assert not np.array_equal(a.composite, world.make_composite(124).composite)


def test_every_object_name_is_one_clip_token_and_every_condition_word_is_in_the_dictionary(tmp_path):
    from zsharm.toy.prior import tokenizer
    tok = tokenizer(tmp_path)
    for name in world.OBJECTS:
        assert len(tok(name).input_ids) == 3, name  # start, the word, end
    for condition in world.CONDITIONS:
        assert [LIST_OF[w] for w in condition.words] == ["brightness", "temperature", "time"]
        assert condition.prompt("ball") == "ball " + " ".join(condition.words)


def test_a_composite_differs_from_its_truth_only_inside_its_mask():
    made = world.make_composite(7)
    assert made.fg != made.bg
    assert np.array_equal(made.composite[~made.mask], made.truth[~made.mask])
    assert np.abs(made.composite[made.mask].astype(int) - made.truth[made.mask]).mean() > 3
    assert 0.02 < made.mask.mean() < 0.4


def test_the_light_is_directional_so_changing_the_time_moves_the_shading_across_the_object():
    # same scene, same colour and strength of light; only its direction (daylight: right, dusk: left) changes
    scene = world.sample_scene(3, obj="ball")
    day, coverage = world.render(scene, world.Condition("bright", "warm", "daylight"))
    dusk, _ = world.render(scene, world.Condition("bright", "warm", "dusk"))
    mask = coverage > 0.99
    cols = np.nonzero(mask.any(0))[0]
    middle = (cols.min() + cols.max()) // 2

    def right_minus_left(image):
        lum = image.mean(-1)
        return lum[:, middle:][mask[:, middle:]].mean() - lum[:, :middle][mask[:, :middle]].mean()

    assert right_minus_left(day) > 0.05 and right_minus_left(dusk) < -0.05


def test_a_colour_statistics_baseline_cannot_undo_a_change_of_light_direction():
    from zsharm.quality.baselines import reinhard
    from zsharm.quality.metrics import fmse
    errors = []
    for seed in range(6):
        scene = world.sample_scene(seed, obj="ball")
        fg, coverage = world.render(scene, world.Condition("bright", "warm", "daylight"))
        truth, _ = world.render(scene, world.Condition("bright", "warm", "dusk"))
        mask = coverage >= 0.5
        composite = world.to_uint8(np.where(mask[..., None], fg, truth))
        truth = world.to_uint8(truth)
        errors.append((fmse(reinhard(composite, mask), truth, mask), fmse(composite, truth, mask)))
    # colour statistics match the mean and spread, not which side is lit: much of the error stays
    assert np.mean([after for after, _ in errors]) > 0.3 * np.mean([before for _, before in errors])


def test_train_and_held_out_seeds_never_meet():
    assert set(world.TRAIN_SEEDS).isdisjoint(range(world.HELD_OUT_SEEDS.start, world.HELD_OUT_SEEDS.start + 10))
    assert world.TRAIN_SEEDS.stop <= world.HELD_OUT_SEEDS.start


@pytest.mark.parametrize("obj", world.OBJECTS)
def test_every_object_renders_inside_the_frame_on_the_ground(obj):
    scene = world.sample_scene(11, obj=obj)
    _, coverage = world.render(scene, world.CONDITIONS[0])
    mask = coverage >= 0.5
    assert mask.any()
    rows = np.nonzero(mask.any(1))[0]
    assert rows.max() < world.SIZE - 1 and rows.max() / world.SIZE > scene.horizon
