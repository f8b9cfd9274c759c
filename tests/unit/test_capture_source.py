"""The AST rules behind params and metrics (nbtrack/capture/source.py)."""

from nbtrack.capture.source import analyze


def test_literals_and_computed_bindings_are_told_apart():
    syntax = analyze("C = 0.1\nlayers = [1, 2]\nneg = -3\nacc = model.score(X, y)\n"
                     "a, b = 1, 'x'\nc, d = f()\nn: int = 5\ntotal += 1\n")
    assert syntax.literal_bindings == {"C": 0.1, "layers": [1, 2], "neg": -3, "a": 1, "b": "x",
                                       "n": 5}
    assert syntax.computed_names == ("acc", "c", "d", "total")


def test_rebinding_to_a_computed_value_makes_a_name_computed():
    syntax = analyze("lr = 0.1\nlr = lr * 2\n")
    assert "lr" not in syntax.literal_bindings
    assert syntax.computed_names == ("lr",)


def test_loop_variables_and_bindings_inside_blocks():
    syntax = analyze("for epoch, batch in enumerate(data):\n    loss = step(batch)\n"
                     "if flag:\n    best = 0.9\nwith open(p) as fh:\n    text = fh.read()\n"
                     "try:\n    r = g()\nexcept Exception:\n    r2 = 0\n")
    assert syntax.loop_variables == {"epoch", "batch"}
    assert set(syntax.computed_names) == {"loss", "fh", "text", "r"}
    assert syntax.literal_bindings == {"best": 0.9, "r2": 0}


def test_function_and_class_bodies_bind_nothing_at_notebook_level():
    syntax = analyze("def f():\n    inner = 1\n    return inner\nclass K:\n    attr = 2\n")
    assert syntax.literal_bindings == {}
    assert "inner" not in syntax.computed_names


def test_fit_calls_name_their_receiver_and_data():
    syntax = analyze("clf.fit(X_train, y_train)\nm = Model(a=1).fit(X2, y)\n"
                     "pipe.partial_fit(X=Xs)\nsearch.fit(X[:10], y)\n")
    assert syntax.fitted == {"clf": "X_train", "m": "X2", "pipe": "Xs", "search": None}


def test_reads_and_mlflow_use():
    syntax = analyze("import mlflow\nmlflow.log_param('a', seed)\n")
    assert "seed" in syntax.read_names
    assert syntax.uses_mlflow and not syntax.starts_own_run
    assert analyze("with mlflow.start_run():\n    pass").starts_own_run
    assert not analyze("x = 1").uses_mlflow


def test_unparsable_source_is_reported_not_raised():
    assert analyze("x = (").parsed is False


def test_names_local_to_functions_and_comprehensions_are_not_read_from_the_notebook():
    # One name analyser for capture and history: a comprehension's or a function's own names are
    # not values the cell takes from earlier cells (a global `x` must not become a param here).
    syntax = analyze("def f(x):\n    return x * scale\nsizes = [len(df) for df in frames]\ny = f(3)")
    assert "x" not in syntax.read_names and "df" not in syntax.read_names
    assert {"scale", "frames"} <= set(syntax.read_names)
    assert "f" not in syntax.read_names  # the cell defines f before it calls it


LOOP_CELL = ("for epoch in range(3):\n    loss = 1.0 / (epoch + 1)\n"
             "    nbtrack.log_metric('loss', loss, step=epoch)\n")


def test_names_a_cell_binds_before_reading_them_are_not_read_from_earlier_cells():
    assert analyze(LOOP_CELL).read_names == ("range", "nbtrack")
    cell = ("with open(path) as fh:\n    text = fh.read()\nprint(text)\n"
            "try:\n    import yaml\nexcept ImportError as err:\n    yaml = None\n    print(err)\n"
            "if (n := len(text)) > limit:\n    print(n, yaml)\n"
            "squares = [v * v for v in range(n) if (last := v)]\nprint(last, squares)\n"
            "while True:\n    done = check()\n    if done:\n        break\n")
    assert analyze(cell).read_names == ("open", "path", "print", "ImportError", "len", "limit",
                                        "range", "check")


def test_a_name_read_before_the_cell_binds_it_is_still_read_from_earlier_cells():
    assert analyze("x = x + 1").read_names == ("x",)
    assert analyze("total += step").read_names == ("total", "step")
    assert analyze("print(y)\ny = 2\nprint(y)").read_names == ("print", "y")
    assert analyze("model = Model(seed=seed)\nmodel.fit(X)").read_names == ("Model", "seed", "X")
    # A comprehension's own name stays its own: the cell still reads the global after it.
    assert analyze("a = [v for v in vs]\nb = v").read_names == ("vs", "v")


def test_a_function_body_reads_names_when_called_not_where_defined():
    syntax = analyze("def f():\n    return g() + scale\ndef g():\n    return 1\nout = f()")
    assert syntax.read_names == ("scale",)
    nested = analyze("def outer(a):\n    b = a\n    return lambda: a + b + c\nclass K:\n"
                     "    size = 3\n    def m(self):\n        return size\n")
    assert nested.read_names == ("c", "size")  # a class's names are not its methods'
