"""zsharm.bars: a bar run in a Jupyter kernel leaves nothing in the saved notebook; elsewhere it is tqdm's."""

import json
import sys

import pytest

from zsharm.bars import bar


def test_outside_a_kernel_a_bar_is_tqdms_and_counts(capsys):
    from tqdm import tqdm
    counted = bar(range(3), desc="x", disable=False)
    assert isinstance(counted, tqdm) and list(counted) == [0, 1, 2]


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / "zsharm-bars"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zsharm bars", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return "zsharm-bars"


def test_a_notebook_run_headless_is_saved_with_no_bars(kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from zsharm.bars import bar\n"
        "for i in bar(range(50), desc='denoise', leave=False):\n    pass\n"
        "with bar(total=3, desc='loop') as b:\n    b.update(3)\n"
        "print('done')")]
    nbclient.NotebookClient(nb, kernel_name=kernel, timeout=120).execute()
    outputs = nb.cells[0].outputs
    saved = json.dumps(outputs)
    assert "it/s" not in saved and "%|" not in saved and "denoise" not in saved, saved
    assert "application/vnd.jupyter.widget-view+json" not in saved
    assert [o for o in outputs if o.get("output_type") == "stream"][0]["text"] == "done\n"
