"""The toy prior's training code, in miniature: each part learns (its loss falls on a tiny batch), and a run
interrupted mid-part and resumed gives the weights an uninterrupted run gives."""

import json

import numpy as np
import torch

from zsharm.toy_lab import train
from zsharm.describe.toy import ToyDescriber, fit


class Mini(train.Recipe):
    scenes = 12
    composites = 6
    vae_steps, vae_batch, vae_crop, vae_lr = 40, 4, 32, 2e-3
    unet_steps, unet_batch, unet_lr = 40, 8, 1e-3
    checkpoint_every = 10
    log_every = 1


def _losses(work, part):
    return [json.loads(line)["loss"] for line in (work / f"{part}_log.jsonl").read_text().splitlines()]


def test_the_vae_and_the_unet_learn_on_a_tiny_batch(tmp_path):
    torch.set_num_threads(1)
    train.make_data(tmp_path, Mini)
    train.train_vae(tmp_path, "cpu", Mini)
    vae = _losses(tmp_path, "vae")
    assert np.mean(vae[-8:]) < 0.7 * np.mean(vae[:8])
    train.encode_latents(tmp_path, "cpu")
    train.train_unet(tmp_path, "cpu", Mini)
    unet = _losses(tmp_path, "unet")
    assert np.mean(unet[-8:]) < 0.9 * np.mean(unet[:8])


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    import pytest
    torch.set_num_threads(1)

    class Short(Mini):
        vae_steps = 20

    for folder in ("whole", "resumed"):
        (tmp_path / folder).mkdir()
        train.make_data(tmp_path / folder, Short)
    train.train_vae(tmp_path / "whole", "cpu", Short)

    logged = train.log_line

    def killed_at_step_13(work, part, **values):  # after the checkpoint of 10 steps, as Ctrl-C would
        if values["step"] == 13:
            raise KeyboardInterrupt
        logged(work, part, **values)

    monkeypatch.setattr(train, "log_line", killed_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train.train_vae(tmp_path / "resumed", "cpu", Short)
    assert not (tmp_path / "resumed" / "vae_final.pt").exists()
    monkeypatch.setattr(train, "log_line", logged)
    train.train_vae(tmp_path / "resumed", "cpu", Short)
    whole = torch.load(tmp_path / "whole" / "vae_final.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "resumed" / "vae_final.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_the_describer_fitted_on_scenes_names_their_brightness(tmp_path):
    from zsharm.toy import world
    scenes = [world.harmonious(seed) for seed in range(80)]
    images = np.stack([s[0] for s in scenes])
    masks = np.stack([s[2] for s in scenes])
    describer = ToyDescriber(fit(images, masks, [s[1] for s in scenes]))
    right = [describer.describe(i, m, n=1)[0].background[0] == c.split()[1] for i, c, m in scenes]
    assert np.mean(right) >= 0.9
