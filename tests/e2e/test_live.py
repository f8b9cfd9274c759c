"""The live panel under a running tracked cell, in real kernels (nbclient, nbtrack run)."""

from __future__ import annotations

import nbformat
from conftest import nbtrack_cli, run_notebook, write_notebook

LOOP = ("%%track -n live{options}\nimport time\nimport nbtrack\n"
        "for epoch in range(40):\n"
        "    nbtrack.log_metric('train_loss', 1.0 / (epoch + 1), step=epoch)\n"
        "    nbtrack.log_metric('val_loss', 1.5 / (epoch + 1), step=epoch)\n"
        "    time.sleep(0.03)\n"
        "print('trained')")


def panels(cell) -> list:
    """The outputs nbtrack added to ``cell``: those whose metadata carries an ``nbtrack`` key."""
    return [o for o in cell.outputs if "nbtrack" in o.get("metadata", {})]


def test_panel_is_drawn_under_the_cell_and_left_as_the_final_picture(tmp_path, store):
    notebook = write_notebook(tmp_path / "live.ipynb", ["%load_ext nbtrack", LOOP.format(options="")])
    executed = run_notebook(notebook, tmp_path)
    cell = executed.cells[-1]
    [panel] = panels(cell)  # one display, updated in place, not one output per redraw
    assert panel.output_type == "display_data"
    svg = panel.data["image/svg+xml"]
    assert svg.startswith("<svg") and "nbtrack-live" in svg
    # train and validation of one quantity in one chart, each with its latest value
    assert svg.count("<polyline") == 2 and ">loss<" in svg
    assert "train_loss 0.025" in svg and "val_loss 0.0375" in svg
    assert "train_loss=0.025" in panel.data["text/plain"]
    # the cell's own output is there, unchanged, besides the panel and the summary line
    stdout = "".join(o.text for o in cell.outputs if o.get("name") == "stdout")
    assert "trained\n" in stdout and "nbtrack: run 'live'" in stdout


def test_no_panel_with_no_live_or_config_and_none_for_cells_without_series(tmp_path, store):
    cells = ["%load_ext nbtrack", LOOP.format(options=" --no-live"),
             "%config Nbtrack.live = False", LOOP.format(options=""),
             "%config Nbtrack.live = None", "%%track -n plain\nscore = 2 * 3"]
    executed = run_notebook(write_notebook(tmp_path / "off.ipynb", cells), tmp_path)
    assert [len(panels(c)) for c in executed.cells] == [0] * len(cells)


def test_batch_executions_show_no_panel_unless_the_cell_asks(tmp_path, store):
    notebook = write_notebook(tmp_path / "project" / "sweep.ipynb",
                              ["%load_ext nbtrack", LOOP.format(options=""),
                               LOOP.format(options=" --live")], parameters="seed = 1")
    nbtrack_cli("run", "sweep.ipynb", "-e", "batch-live", "--no-progress",
                cwd=notebook.parent, check=True)
    [executed] = (notebook.parent / "runs").rglob("*.ipynb")
    cells = nbformat.read(executed, 4).cells
    assert len(panels(cells[-2])) == 0 and len(panels(cells[-1])) == 1
