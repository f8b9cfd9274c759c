"""Upstream params (nbtrack/capture/upstream.py): the simple values of earlier cells that the names
a tracked cell reads were made from, followed through the kernel's history."""

from __future__ import annotations

from nbtrack.capture.upstream import MAX_HISTORY_ENTRIES, upstream_params

SPLIT = """def train_test_split(X, y, random_state=None, test_size=0.25):
    cut = int(len(X) * (1 - test_size))
    return X[:cut], X[cut:], y[:cut], y[cut:]
"""


def run(history: list[tuple[int, str]]) -> dict:
    """The namespace the history leaves, as a kernel would have it."""
    namespace: dict = {}
    for _, source in history:
        exec(source, namespace)
    namespace.pop("__builtins__", None)
    return namespace


def test_a_cell_reading_split_data_records_the_seed_the_split_used():
    history = [(1, SPLIT), (2, "seed = 7\ntest_size = 0.2\nverbose = True"),
               (3, "X = np.arange(20).reshape(10, 2)\ny = np.arange(10) % 2"),
               (4, "X_train, X_test, y_train, y_test = train_test_split(\n"
                   "    X, y, random_state=seed, test_size=test_size)")]
    namespace = run([(0, "import numpy as np"), *history])
    params = upstream_params(history, ["Model", "X_train", "y_train"], namespace, 20)
    assert params == {"seed": 7, "test_size": 0.2}  # not X, y (arrays) nor the function


def test_dependencies_are_followed_through_a_chain_of_cells_statement_by_statement():
    history = [(1, "cfg = {'lr': 0.1, 'depth': 3}\nunrelated = 5"),
               (2, "steps = cfg['depth'] * 10; other = unrelated + 1"),
               (3, "schedule = [cfg['lr']] * steps")]
    namespace = run(history)
    params = upstream_params(history, ["schedule"], namespace, 20)
    assert params == {"cfg.lr": 0.1, "cfg.depth": 3, "steps": 30}  # `other` is not an input


def test_the_latest_definition_before_the_cell_is_the_one_followed():
    history = [(1, "lr = 0.1\nalpha = 3"), (2, "X = [lr]"), (3, "X = [alpha]")]
    assert upstream_params(history, ["X"], run(history), 20) == {"alpha": 3}
    # Rebound after the cell that used it: its value now is not the one X was made from.
    rebound = [(1, "seed = 7"), (2, "X = [seed]"), (3, "seed = 8")]
    assert upstream_params(rebound, ["X"], run(rebound), 20) == {}
    # Changed in place after it was bound: the value now is the one used.
    changed = [(1, "cfg = {'lr': 0.1}"), (2, "cfg['lr'] = 0.2"), (3, "X = [cfg['lr']]")]
    assert upstream_params(changed, ["X"], run(changed), 20) == {"cfg.lr": 0.2}


def test_names_the_cell_reads_or_binds_itself_are_not_repeated():
    history = [(1, "seed = 7\nn = 100"), (2, "data = list(range(n + seed))")]
    namespace = run(history)
    assert upstream_params(history, ["data", "seed"], namespace, 20) == {"n": 100}
    assert upstream_params(history, ["data"], namespace, 20, bound_names=["seed"]) == {"n": 100}


def test_values_that_are_not_simple_or_are_secret_are_left_out():
    history = [(1, "api_key = 'abcd1234'\nweights = list(range(50))\nmodel = object()\n"
                   "creds = {'user': 'me', 'password': 'pw12345'}\nsize = 3"),
               (2, "client = (api_key, weights, model, creds, size)")]
    namespace = run(history)
    # A secret key inside a dict is left out, as with the cell's own params.
    assert upstream_params(history, ["client"], namespace, 20) == {"creds.user": "me", "size": 3}
    assert upstream_params(history, ["client"], namespace, 60)["weights"] == list(range(50))


def test_unparsable_and_magic_cells_are_skipped():
    history = [(1, "seed = 7"), (2, "X = (seed"), (3, "%%bash\necho hi"),
               (4, "get_ipython().run_line_magic('matplotlib', 'inline')"),
               (5, "%time X = [seed]\nX = [seed]"), (6, "files = get_ipython().getoutput('ls')")]
    assert upstream_params(history, ["X", "files"], {"seed": 7, "X": [7], "files": ["a"]},
                           20) == {"seed": 7}
    assert upstream_params([], ["X"], {}, 20) == {}


def test_only_the_latest_history_entries_are_followed():
    history = [(1, "seed = 7"), *[(i, f"v{i} = {i}") for i in range(2, MAX_HISTORY_ENTRIES + 2)],
               (MAX_HISTORY_ENTRIES + 2, "X = [seed]")]
    assert upstream_params(history, ["X"], {"seed": 7}, 20) == {}
    assert upstream_params(history[1:], ["X"], {"seed": 7}, 20) == {}
    assert upstream_params(history[:1] + history[3:], ["X"], {"seed": 7}, 20) == {"seed": 7}


def test_modules_and_classes_are_not_followed():
    import matplotlib.pyplot as plt

    history = [(1, "import matplotlib.pyplot as plt\nepochs = 5"),
               (2, "plt.plot(range(epochs))"),
               (3, "class Net:\n    pass\nwidth = 3"),
               (4, "Net.width = width")]
    namespace = {"plt": plt, "epochs": 5, "Net": type("Net", (), {}), "width": 3}
    assert upstream_params(history, ["plt", "Net"], namespace, 20) == {}
