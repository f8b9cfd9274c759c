"""The kernel's history read back and checked for hidden state (nbtrack/capture/history.py):
parse, python_code, names, find (out of order, edited, undefined), summary, minimal."""

from __future__ import annotations

from nbtrack.capture import history, source
from nbtrack.capture.history import EDITED, OUT_OF_ORDER, UNDEFINED, Entry, Finding


def test_parse_splits_a_history_text_into_its_entries():
    text = "# In[1]:\nimport numpy as np\n\n\n# In[3]:\nx = np.ones(3)\n\ny = x * 2\n"
    assert history.parse(text) == [Entry(1, "import numpy as np"),
                                   Entry(3, "x = np.ones(3)\n\ny = x * 2")]
    assert history.parse("") == [] and history.parse("no header\nx = 1") == []


def test_python_code_drops_the_track_line_magics_and_shell_escapes():
    assert history.python_code("%%track -n fit\n%matplotlib inline\n!ls\nC = 0.1") == "C = 0.1"
    assert history.python_code("%%bash\necho hi") == ""  # another cell magic: no Python
    assert history.python_code("x = (") == ""  # does not parse
    assert history.python_code("%%track\nC = 1\n  %time y = 2") == "C = 1"


def test_names_tell_what_a_cell_defines_and_reads_first():
    found = history.names("import numpy as np\nx = np.ones(3) * scale\nclf.fit(x)\n"
                          "df['c'] = 1\nfor i in range(3):\n    total = i\n"
                          "def f(a):\n    return a + hidden\n")
    assert found.defines == {"np", "x", "clf", "df", "i", "total", "f"}
    assert found.reads == ("scale", "clf", "df", "range", "hidden")  # a global f reads
    assert history.names("x = (") == source.Names(frozenset(), ())


def test_find_without_a_saved_notebook_checks_names_against_the_history():
    entries = [Entry(1, "a = 1"), Entry(2, "%%track\nc = a * k + len(In) + _private")]
    [finding] = history.find(entries, None)
    assert finding == Finding(UNDEFINED, "the tracked cell reads 'k', which nothing in the "
                                         "kernel's history defines", None)
    assert history.find([Entry(1, "a = 1"), Entry(2, "b = a")], None) == []
    assert history.find([Entry(1, "   ")], None) == []


def test_find_flags_a_tracked_cell_edited_since_it_ran():
    saved = [(1, "a = 1"), (2, "b = a * 2")]
    kinds = [(f.kind, f.count) for f in history.find([Entry(1, "a = 1"), Entry(2, "b = a * 3")],
                                                    saved)]
    assert kinds == [(EDITED, 2)]


def test_find_flags_a_cell_run_again_after_a_later_one():
    saved = [(1, "a = 1"), (2, "a = a * 2"), (3, "b = a")]
    ran = [Entry(1, "a = 1"), Entry(2, "a = a * 2"), Entry(3, "a = a * 2"), Entry(4, "b = a")]
    [finding] = history.find(ran, saved)
    assert (finding.kind, finding.count) == (OUT_OF_ORDER, 3)
    assert finding.message == ("cells ran out of order: In[3] ran cell 2 of the saved notebook "
                               "again, after In[2]")


def test_summary_joins_findings_and_counts_beyond_five_of_a_kind():
    findings = [Finding(EDITED, f"edit {i}", i) for i in range(7)] + [Finding(UNDEFINED, "k", None)]
    assert history.summary(findings) == ("edit 0; edit 1; edit 2; edit 3; edit 4; k; 2 more cells "
                                         "ran code that no cell of the saved notebook holds")
    assert history.summary([]) == ""


def test_history_reports_out_of_order_edited_and_undefined_names():
    saved = [(1, "a = 1"), (2, "b = a + 1"), (3, "%%track\nc = b * k")]
    in_order = [Entry(1, "a = 1"), Entry(2, "b = a + 1"), Entry(3, "%%track\nc = b * k")]
    findings = history.find(in_order, saved)
    assert [f.kind for f in findings] == [history.UNDEFINED]  # k: nothing saved defines it
    assert "'k'" in findings[0].message

    ran = [Entry(1, "a = 1"), Entry(2, "k = 3"), Entry(3, "b = a + 1"), Entry(4, "a = 1"),
           Entry(5, "b = a + 1"), Entry(6, "%%track\nc = b * k")]
    kinds = {(f.kind, f.count) for f in history.find(ran, saved)}
    assert (history.EDITED, 2) in kinds  # k = 3 is in no saved cell
    assert (history.OUT_OF_ORDER, 4) in kinds  # cell 1 again, after cell 2
    assert any(kind == history.UNDEFINED for kind, _ in kinds)
    undefined = next(f for f in history.find(ran, saved) if f.kind == history.UNDEFINED)
    assert "In[2] of the history did" in undefined.message


def test_history_of_a_papermill_run_with_injected_parameters_is_clean():
    saved = [(1, "%load_ext nbtrack"), (2, "seed = 1"), (3, "%%track\nscore = seed * 2")]
    ran = [Entry(1, "%load_ext nbtrack"), Entry(2, "seed = 1"),
           Entry(3, "# Parameters\nseed = 7\n"), Entry(4, "%%track\nscore = seed * 2")]
    assert history.find(ran, saved) == []


def test_minimal_follows_names_back_through_the_cells_that_bound_them():
    ran = [Entry(1, "%load_ext nbtrack"), Entry(2, "import numpy as np\nimport pandas as pd"),
           Entry(3, "x = np.arange(10)"), Entry(4, "print('look at the data')"),
           Entry(5, "unused = pd.DataFrame()"), Entry(6, "model = Holder()\nscale = 2"),
           Entry(7, "model.fit(x)"), Entry(8, "%%track -n fit\nscore = model.score(x) * scale")]
    kept = [e.count for e in history.minimal(ran)]
    assert kept == [1, 2, 3, 6, 7, 8]




def test_a_tracked_loop_that_binds_before_it_reads_shows_no_hidden_state():
    loop = ("%%track\nfor epoch in range(3):\n    loss = 1.0 / (epoch + 1)\n"
            "    nbtrack.log_metric('loss', loss, step=epoch)")
    assert history.find([Entry(1, "import nbtrack"), Entry(2, loop)], None) == []
    cell = ("%%track\nwith open('f') as fh:\n    rows = fh.readlines()\n"
            "try:\n    n = len(rows)\nexcept TypeError as err:\n    n = str(err)\n"
            "sizes = [len(r) for r in rows if (last := r)]\nprint(n, sizes, last)")
    assert history.find([Entry(1, cell)], None) == []
    [finding] = history.find([Entry(1, "%%track\nx = x + 1")], None)
    assert "'x'" in finding.message  # read before the cell binds it


def test_names_follow_the_order_of_statements_inside_blocks():
    found = history.names("for i in range(3):\n    clf.partial_fit(batch(i))\n    best = i\n"
                          "print(best)\nprint(later)\nlater = 1")
    assert found.reads == ("range", "clf", "batch", "print", "later")
    assert found.defines == {"i", "clf", "best", "later"}  # partial_fit changes clf in a loop too
