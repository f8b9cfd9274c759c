"""The capture rules of a tracked cell (nbtrack/capture/cell.py), called directly.

Each test builds the :class:`ActiveCell` the tracker would open, runs the cell's code with ``exec``
in a plain dict (the namespace), and calls the rule on them: no shell, no kernel, no MLflow.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nbtrack.capture import cell as capture
from nbtrack.capture.figures import FigureCollector
from nbtrack.capture.secrets import REDACTED
from nbtrack.capture.source import analyze
from nbtrack.config import Nbtrack
from nbtrack.record import FAILED, FINISHED, KILLED, CellContext, TrackOptions

COUNT = 7


def begin(code: str, before: dict | None = None, *, options: TrackOptions | None = None,
          environ: dict | None = None, settings: Nbtrack | None = None, notebook: Path | None = None,
          history: tuple = (), cell_id: str | None = None, raw_source: str | None = None):
    """The ActiveCell the tracker opens for ``code`` in a namespace holding ``before``."""
    namespace = dict(before or {})
    settings = settings or Nbtrack()
    syntax = analyze(code)
    git: Future = Future()
    git.set_result({"commit": "0" * 40, "dirty": "false", "branch": "main"})
    active = capture.ActiveCell(
        cell=CellContext(raw_source=raw_source or code, code=code, execution_count=COUNT,
                         cell_id=cell_id, history=history, cwd=Path.cwd()),
        options=options or TrackOptions(),
        syntax=syntax,
        experiment="exp",
        run_name=capture.default_run_name(notebook, COUNT),
        notebook=notebook,
        started_ms=1_000,
        read_params=capture.read_params(syntax, namespace, settings.max_collection_items),
        names_before=frozenset(namespace),
        figures=FigureCollector(),
        settings=settings,
        environ=environ or {},
        git=git,
    )
    return active, namespace


def run(code: str, before: dict | None = None, **kwargs):
    """Track ``code``: begin, execute it in the namespace, build the record. Returns
    ``(record, active)``."""
    active, namespace = begin(code, before, **kwargs)
    error = None
    try:
        exec(code, namespace)
    except BaseException as raised:  # noqa: B036 - the cell's KeyboardInterrupt is recorded too
        error = raised
    return capture.build_record(active, namespace, error, ended_ms=2_000), active


def artifact(record, path: str) -> str:
    return next(a.content.decode() for a in record.artifacts if a.path == path)


def logged_text(record) -> str:
    """Everything the record would write as text: params, tags and text artifacts."""
    parts = [*record.params.values(), *record.tags.values()]
    parts += [a.content.decode(errors="replace") for a in record.artifacts if hasattr(a, "content")]
    return "\n".join(parts)


# -- params and metrics -------------------------------------------------------------------------


def test_literals_are_params_and_computed_numbers_are_metrics():
    record, active = run("C = 0.1\nmodel = 'logreg'\ncfg = {'lr': 0.01, 'layers': [64, 32]}\n"
                         "use_bias = True\nauc = C * 5\nwide = C > 0\nlabel = model.upper()")
    assert record.params == {"C": "0.1", "model": "logreg", "cfg.lr": "0.01",
                             "cfg.layers": "[64, 32]", "use_bias": "True"}
    # A bool or a string computed by the cell is no metric; a literal is no metric either.
    assert record.metrics == {"auc": 0.5}
    assert record.status == FINISHED and active.problems == []


def test_numpy_numbers_are_metrics_and_long_lists_no_params():
    record, _ = run("import numpy as np\nscores = list(range(50))\nsizes = [1, 2, 3]\n"
                    "mean = np.float32(0.25) + 0\ncount = np.int64(3) * 2")
    assert record.metrics == {"mean": 0.25, "count": 6.0}
    assert "sizes" in record.params and "scores" not in record.params


def test_names_read_from_earlier_cells_are_params_when_simple():
    before = {"max_iter": 200, "seed": 7, "data": np.arange(10), "grid": {"C": [0.1, 1.0]}}
    record, _ = run("score = max_iter / 2 + data.mean() + grid['C'][0]", before)
    # read and simple: params; `seed` is not read, `data` is no simple value.
    assert record.params == {"max_iter": "200", "grid.C": "[0.1, 1.0]"}
    assert record.metrics == {"score": 104.6}


def test_read_params_are_taken_before_the_cell_runs():
    active, namespace = begin("lr = lr * 2", {"lr": 0.5})
    assert active.read_params == {}  # the cell binds lr itself: its value is a metric
    active, namespace = begin("out = lr * 2", {"lr": 0.5})
    exec("out = lr * 2\nlr = 99", namespace)  # noqa: S102 - a later rebinding changes nothing
    assert active.read_params == {"lr": 0.5}


def test_loop_variables_are_no_metrics():
    record, _ = run("total = 0\nfor epoch in range(3):\n    loss = 1.0 / (epoch + 1)\n"
                    "    total = total + loss")
    assert "epoch" not in record.metrics and "epoch" not in record.params
    assert record.metrics == {"loss": pytest.approx(1 / 3), "total": pytest.approx(11 / 6)}
    # A computed name the cell then loops over is a loop variable too.
    record, _ = run("epoch = start * 1\nfor epoch in range(epoch, 3):\n    loss = 0.5 * epoch",
                    {"start": 1})
    assert record.metrics == {"loss": 1.0}


def test_private_and_shell_names_are_never_params_or_metrics():
    before = {"_seed": 3, "In": ["", "x = 1"], "Out": {}, "_i3": "x = 1"}
    record, _ = run("_scale = 2\n_tmp = _seed * 2.0\nvalue = _tmp + len(In)", before)
    assert record.params == {}
    assert record.metrics == {"value": 8.0}


def test_params_flag_logs_exactly_the_named_values_and_warns_of_the_rest():
    options = TrackOptions(params=("C", "cfg", "clf", "missing"), metrics=("acc", "name", "gone"))
    record, active = run("C = 0.1\nother = 5\ncfg = {'depth': 3}\nclf = object()\n"
                         "acc = 0.9 * 1\nloss = 0.1 * 2\nname = 'x'", options=options)
    assert record.params == {"C": "0.1", "cfg.depth": "3"}
    assert record.metrics == {"acc": 0.9}
    problems = "\n".join(active.problems)
    assert "param 'missing' named in --params is not defined" in problems
    assert "param 'clf' not logged: a object is not a number" in problems
    assert "metric 'gone' named in --metrics is not defined" in problems
    assert "metric 'name' not logged: a str is not a number" in problems


def test_log_param_wins_over_the_cells_value_with_a_warning():
    active, namespace = begin("C = 0.1")
    active.explicit_params["C"] = 0.2
    exec("C = 0.1", namespace)  # noqa: S102
    params = capture.cell_params(active, namespace, active.problems.append)
    assert params["C"] == 0.2
    assert active.problems == ["param 'C' logged as '0.2' by log_param; "
                               "the cell's value '0.1' is not logged."]


# -- secrets --------------------------------------------------------------------------------------


def test_secret_names_are_never_logged_and_their_values_are_redacted_everywhere():
    code = ('api_key = "sk-live-123456"\ndb_password = "hunter2-hunter2"\n'
            'uri = "postgresql://alice:pgpass-9876@db/prod"\nsecret_score = 0.5 * 2\n'
            'print(api_key, os_token)\nlr = 0.1')
    environ = {"SERVICE_TOKEN": "env-token-abcdef"}
    record, _ = run(code, {"os_token": "env-token-abcdef"}, environ=environ,
                    options=TrackOptions(tags={"note": "key sk-live-123456"}))
    assert {"api_key", "db_password", "secret_score"}.isdisjoint({*record.params, *record.metrics})
    assert record.params["uri"] == f"postgresql://alice:{REDACTED}@db/prod"
    assert record.params["lr"] == "0.1"
    text = logged_text(record)
    for secret in ("sk-live-123456", "hunter2-hunter2", "pgpass-9876", "env-token-abcdef"):
        assert secret not in text, secret
    assert REDACTED in artifact(record, "cell/source.py")
    assert record.tags["note"] == f"key {REDACTED}"


def test_secrets_in_a_failing_cells_error_are_redacted():
    code = 'password = "correct-horse-42"\nraise RuntimeError("login failed: " + password)'
    record, _ = run(code)
    assert record.status == FAILED
    assert "correct-horse-42" not in record.tags["nbtrack.error"]
    assert "correct-horse-42" not in artifact(record, "error/traceback.txt")


# -- estimators -----------------------------------------------------------------------------------


@pytest.fixture
def training():
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    y = (X["a"] > 0).astype(int)
    return {"X": X, "y": y, "LogisticRegression": LogisticRegression,
            "make_pipeline": make_pipeline, "StandardScaler": StandardScaler}


def test_fitted_estimator_gives_its_hyperparameters_and_its_model(training):
    record, active = run("clf = LogisticRegression(C=0.5, max_iter=50)\nclf.fit(X, y)", training)
    assert record.params["clf.C"] == "0.5" and record.params["clf.max_iter"] == "50"
    [model] = record.models
    assert model.name == "clf" and isinstance(model.estimator, LogisticRegression)
    assert model.estimator.coef_.shape == (1, 3) and active.problems == []
    pd.testing.assert_frame_equal(model.input_example, training["X"].head(5))


def test_a_pipeline_bound_fitted_gives_prefixed_step_params(training):
    record, _ = run("pipe = make_pipeline(StandardScaler(), LogisticRegression(C=3.0)).fit(X, y)",
                    training)
    assert record.params["pipe.logisticregression__C"] == "3.0"
    assert [m.name for m in record.models] == ["pipe"]
    # A chained fit(X, y) is seen too: the example is the first rows of X.
    pd.testing.assert_frame_equal(record.models[0].input_example, training["X"].head(5))


def test_unfitted_estimators_and_no_model_option_log_no_model(training):
    record, _ = run("clf = LogisticRegression(C=0.5)", training)
    assert record.models == () and not any(k.startswith("clf.") for k in record.params)
    record, _ = run("clf = LogisticRegression(C=0.5).fit(X, y)", training,
                    options=TrackOptions(model=False))
    assert record.models == ()
    settings = Nbtrack(models=False)
    record, _ = run("clf = LogisticRegression(C=0.5).fit(X, y)", training, settings=settings)
    assert record.models == ()


def test_data_the_cell_reads_and_binds_are_datasets(training):
    record, _ = run("X_small = X.head(10)\nn = len(X_small) * 1.0", training)
    assert {(d.name, d.context) for d in record.datasets} == {("X", "read"), ("X_small", "bound")}
    record, _ = run("X_small = X.head(10)", training, settings=Nbtrack(datasets=False))
    assert record.datasets == ()


# -- injected parameters ---------------------------------------------------------------------------


def test_injected_parameters_are_logged_and_win_over_the_cells_literals():
    environ = {"NBTRACK_PARAMETERS": json.dumps({"C": 0.3, "grid": {"depth": 4}, "tag": None})}
    record, _ = run("C = 0.1\nscore = C * 2", environ=environ)
    assert record.params == {"C": "0.3", "grid.depth": "4", "tag": "None"}


def test_injected_parameters_that_are_not_json_are_a_warning():
    problems: list[str] = []
    assert capture.injected_parameters({"NBTRACK_PARAMETERS": "{C: 1"}, 20, problems.append) == {}
    assert problems == ["NBTRACK_PARAMETERS is not JSON: the injected parameters are not logged."]
    assert capture.injected_parameters({}, 20, problems.append) == {}


# -- status, errors, tags -----------------------------------------------------------------------


def test_a_cell_that_raised_is_failed_with_its_traceback():
    record, _ = run("x = 1\nraise ValueError('boom')")
    assert record.status == FAILED
    assert record.tags["nbtrack.error"] == "ValueError: boom"
    trace = artifact(record, "error/traceback.txt")
    assert trace.startswith("Traceback") and "ValueError: boom" in trace
    assert record.params == {"x": "1"}  # what the cell bound before it raised is kept


def test_keyboard_interrupt_is_killed_without_a_traceback():
    record, _ = run("x = 1\nraise KeyboardInterrupt")
    assert record.status == KILLED
    assert record.tags["nbtrack.error"] == "KeyboardInterrupt"
    assert "error/traceback.txt" not in {a.path for a in record.artifacts}


def test_run_status():
    assert capture.run_status(None) == FINISHED
    assert capture.run_status(KeyboardInterrupt()) == KILLED
    assert capture.run_status(ValueError()) == FAILED
    assert capture.run_status(SystemExit(1)) == FAILED


def test_run_tags_name_the_notebook_cell_git_and_options(tmp_path):
    notebook = tmp_path / "train.ipynb"
    environ = {"NBTRACK_SWEEP_ID": "sw1", "NBTRACK_EXECUTION_ID": "ex1"}
    record, _ = run("x = 1", notebook=notebook, cell_id="cell-abc", environ=environ,
                    options=TrackOptions(tags={"stage": "baseline"}))
    tags = record.tags
    assert tags["mlflow.runName"] == "train #7" and record.run_name == "train #7"
    assert tags["mlflow.source.name"] == tags["nbtrack.notebook"] == str(notebook)
    assert tags["nbtrack.cell"] == tags["nbtrack.cell_id"] == "cell-abc"
    assert tags["nbtrack.execution_count"] == "7"
    assert tags["mlflow.source.git.commit"] == "0" * 40 and tags["nbtrack.git.branch"] == "main"
    assert tags["nbtrack.sweep"] == "sw1" and tags["nbtrack.execution"] == "ex1"
    assert tags["stage"] == "baseline"
    assert tags["mlflow.note.content"] == "```python\nx = 1\n```"
    assert "nbtrack.version.numpy" in tags  # imported here, so its version is recorded


def test_cell_identity_without_a_cell_id_hashes_notebook_and_source():
    first, _ = run("x = 1")
    again, _ = run("x = 1\n")
    other, _ = run("x = 2")
    assert first.tags["nbtrack.cell"].startswith("src-")
    assert first.tags["nbtrack.cell"] == again.tags["nbtrack.cell"] != other.tags["nbtrack.cell"]
    assert first.tags["nbtrack.notebook"] == "<ipython>" and first.run_name == "ipython #7"


def test_opening_tags_find_the_run_if_the_kernel_dies():
    active, _ = begin("x = 1", environ={"NBTRACK_BATCH": "nbtrack run", "NBTRACK_SWEEP_ID": "s"})
    assert capture.opening_tags(active) == {
        "mlflow.source.type": "NOTEBOOK", "mlflow.source.name": "<ipython>",
        "nbtrack.notebook": "<ipython>", "nbtrack.sweep": "s", "nbtrack.batch": "nbtrack run"}


def test_default_run_name():
    assert capture.default_run_name(Path("/w/train.ipynb"), 12) == "train #12"
    assert capture.default_run_name(None, 3) == "ipython #3"
    assert capture.default_run_name(Path("/w/train.ipynb"), None) == "train"


def test_redactor_for_covers_environment_source_namespace_and_history():
    active, namespace = begin("x = 1", {"token": "ns-token-111111"},
                              environ={"GITHUB_TOKEN": "env-token-222222"},
                              history=((1, 'pwd = "hist-pwd-333333"'),))
    before = capture.redactor_for(active)
    assert before.redact("env-token-222222") == REDACTED
    assert "ns-token-111111" in before.redact("ns-token-111111")  # the cell has not run yet
    after = capture.redactor_for(active, namespace)
    assert after.redact("ns-token-111111 hist-pwd-333333") == f"{REDACTED} {REDACTED}"


# -- lineage and hidden state ---------------------------------------------------------------------


def test_history_artifact_lists_earlier_inputs_then_the_cell():
    history = ((1, "a = 1"), (2, "b = a + 1"))
    record, _ = run("c = b * 2", {"a": 1, "b": 2}, history=history)
    assert artifact(record, "lineage/history.py").split() == [
        "#", "In[1]:", "a", "=", "1", "#", "In[2]:", "b", "=", "a", "+", "1",
        "#", f"In[{COUNT}]:", "c", "=", "b", "*", "2"]
    record, _ = run("c = b * 2", {"a": 1, "b": 2}, history=history,
                    settings=Nbtrack(history=False))
    assert "lineage/history.py" not in {a.path for a in record.artifacts}
    assert "nbtrack.hidden_state" not in record.tags


def test_hidden_state_names_what_no_earlier_input_defines():
    record, _ = run("c = b * k", {"b": 2, "k": 3}, history=((1, "b = 2"),))
    assert "'k'" in record.tags["nbtrack.hidden_state"]
    active, _ = begin("c = b * 2", history=((1, "b = 2"),))
    assert capture.hidden_state(active, capture.redactor_for(active), None, print) == ""


def test_hidden_state_against_the_saved_notebook_finds_edited_cells(tmp_path):
    import nbformat

    notebook = tmp_path / "nb.ipynb"
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("b = 2"), nbformat.v4.new_code_cell("c = b * 2")]
    nbformat.write(book, notebook)
    record, _ = run("c = b * 2", {"b": 5}, notebook=notebook, history=((1, "b = 5"),))
    assert "edited" in record.tags["nbtrack.hidden_state"]
    assert "lineage/nb.ipynb" in {a.path for a in record.artifacts}


def test_a_failing_hidden_state_check_is_a_problem_not_an_error(monkeypatch):
    from nbtrack.capture import history

    def broken(*args):
        raise RuntimeError("analysis broke")

    monkeypatch.setattr(history, "find", broken)
    record, active = run("x = 1", history=((1, "y = 2"),))
    assert "nbtrack.hidden_state" not in record.tags
    assert active.problems == ["hidden notebook state not checked: RuntimeError: analysis broke"]
