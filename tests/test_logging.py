"""The `zsharm` logger: the command line shows warnings, -v what zsharm does, -q errors only."""

import torch

from conftest import make_composite
from zsharm.commands.cli import main, reset_logging, setup_logging
from zsharm.distributed import ProcessPlace, process_device


def test_verbose_says_which_model_on_which_device(tmp_path, capsys):
    from PIL import Image
    import numpy as np
    image, mask = make_composite(96, 64)
    Image.fromarray(np.asarray(image)).save(tmp_path / "c.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    argv = ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o.png"),
            "--source", "cat bright", "--target", "cat winter dull", "--no-evaluator", "--model", "tiny", "--steps",
            "2", "--size", "64", "--no-edges", "--quiet", "--device", "cpu"]
    assert main(["-v", *argv]) == 0
    assert "zsharm: loading tiny on cpu in float32" in capsys.readouterr().err.splitlines()
    assert main(argv) == 0
    assert "zsharm: loading" not in capsys.readouterr().err


def test_warnings_show_by_default_and_quiet_hides_them(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    try:
        setup_logging()
        assert process_device(ProcessPlace(3, 4, 3)) == torch.device("cuda", 1)
        assert capsys.readouterr().err == "zsharm: warning: local rank 3 but only 2 GPUs visible: sharing cuda:1\n"
        setup_logging(quiet=1)
        process_device(ProcessPlace(3, 4, 3))
        assert capsys.readouterr().err == ""
    finally:
        reset_logging()
