"""Write the handbook-style notebooks that tests/test_real_notebooks.py executes.

Run from the checkout's root: ``.venv/bin/python tests/notebooks/make_notebooks.py``. The notebooks
are written the way tutorials are (imports first, many small cells, markdown between, plots,
printed output, rich results, warnings, errors raised on purpose); they use only data bundled with
scikit-learn or made in the notebook. A cell's ``tags`` say what it must do when run untracked, so
the test notices when a new library version stops warning or raising where a notebook expects it:
``raises-<ExceptionName>``, ``warns`` (a warning on stderr), ``warns-once`` (exactly one warning,
though the cell warns from the same place more than once).

Python shows a warning once per location (module and line), but in a Jupyter kernel only within
one cell: IPython empties the notebook's own registry before each cell
(``InteractiveShell._clear_warning_registry``, IPython gh-6611), and the kernel's per-cell work
changes the warning filters (``catch_warnings``), which empties every module's registry. So a
helper defined in the notebook warns again in every cell that calls it, and so does a library
warning (numpy's, pandas', scikit-learn's) triggered again in a later cell; both run untracked,
checked by the ``warns`` tags on those later cells.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

NUMPY = [
    "# Introduction to NumPy\n\nArrays, ufuncs, aggregation and broadcasting, one small step per cell.",
    ("import warnings\n\nimport matplotlib.pyplot as plt\nimport numpy as np\n\n%matplotlib inline",),
    "## Creating arrays",
    ("x = np.arange(10)\nx",),
    ("x.dtype, x.shape, x.ndim",),
    ("rng = np.random.default_rng(42)\nM = rng.integers(0, 10, size=(3, 4))\nM",),
    ("print('total:', M.sum())\nprint('column sums:', M.sum(axis=0))\nprint('row max:', M.max(axis=1))",),
    ("M.mean()",),
    "## Universal functions\n\nUfuncs apply element by element; some inputs are outside their domain.",
    ("np.sqrt(M)",),
    ("empty = np.array([])\nempty.mean()", "warns"),
    ("np.log(-1)", "warns"),
    ("np.array([1.0, 2.0, 3.0]) / np.array([1.0, 0.0, 2.0])", "warns"),
    ("1 / 0", "raises-ZeroDivisionError"),
    "## A helper that warns\n\nPython shows a warning once per location, and Jupyter once per cell.",
    ("def legacy_mean(values):\n"
     "    warnings.warn('legacy_mean is deprecated; use np.mean instead', UserWarning)\n"
     "    return np.mean(values)",),
    ("legacy_mean(M)", "warns"),
    ("x ** 2",),
    ("legacy_mean(x)", "warns"),
    ("legacy_mean(M) + legacy_mean(x)", "warns-once"),
    ("for step in range(3):\n"
     "    warnings.warn('this loop is slow; vectorise it', RuntimeWarning)\n"
     "    print('step', step)", "warns-once"),
    "## Aggregations and timing",
    ("big = rng.random(100_000)\n%timeit -n 5 -r 2 big.sum()",),
    ("np.percentile(big, [25, 50, 75]).round(2)",),
    ("print(undefined_array.sum())", "raises-NameError"),
    "## Broadcasting and plotting",
    ("centered = M - M.mean(axis=0)\ncentered.mean(axis=0)",),
    ("grid = np.linspace(0, 5, 50)\nz = np.sin(grid)[:, None] * np.cos(grid)\nz.shape",),
    ("fig, ax = plt.subplots(figsize=(4, 3))\nim = ax.imshow(z, origin='lower', cmap='viridis')\n"
     "fig.colorbar(im)\nplt.show()",),
    ("plt.plot(grid, np.sin(grid))",),
    ("np.sort(M, axis=1)",),
    ("np.mean(empty)", "warns"),
    ("np.argsort(x[::-1])[:5]",),
]

PANDAS = [
    "# Data manipulation with pandas\n\nSeries, DataFrames, indexing, missing data and grouping.",
    ("import warnings\n\nimport matplotlib.pyplot as plt\nimport numpy as np\nimport pandas as pd\n\n"
     "%matplotlib inline",),
    "## Series",
    ("data = pd.Series([0.25, 0.5, 0.75, 1.0], index=['a', 'b', 'c', 'd'])\ndata",),
    ("data['b']",),
    ("data['e']", "raises-KeyError"),
    ("data.values",),
    "## DataFrames",
    ("area = pd.Series({'California': 423967, 'Texas': 695662, 'New York': 141297,\n"
     "                  'Florida': 170312, 'Illinois': 149995})\n"
     "pop = pd.Series({'California': 38332521, 'Texas': 26448193, 'New York': 19651127,\n"
     "                 'Florida': 19552860, 'Illinois': 12882135})\n"
     "states = pd.DataFrame({'population': pop, 'area': area})\nstates",),
    ("states['density'] = states['population'] / states['area']\nstates.sort_values('density')",),
    ("states.describe()",),
    ("print(states.dtypes)\nprint()\nprint(states.loc['Texas'])",),
    ("states.loc[states['density'] > 100, ['population', 'density']]",),
    "## Chained assignment\n\nWith copy-on-write, assigning through two indexing steps never updates "
    "the frame.",
    ("states['area']['Texas'] = 0\nstates.loc['Texas', 'area']", "warns"),
    "## A column check that warns",
    ("def check_columns(frame):\n"
     "    warnings.warn('check_columns: column names are not validated yet', UserWarning)\n"
     "    return list(frame.columns)",),
    ("check_columns(states)", "warns"),
    ("check_columns(states[['area']])", "warns"),
    "## Missing data",
    ("values = pd.Series([1.0, np.nan, -2.0, 4.0])\nvalues.isnull().sum()",),
    ("np.log(values)", "warns"),
    ("values.fillna(0)",),
    ("np.log(values - 1)", "warns"),
    ("for column in ['population', 'area']:\n"
     "    if states[column].min() < 50_000_000:\n"
     "        warnings.warn('some columns have small values', UserWarning)\n"
     "    print(column, states[column].min())", "warns-once"),
    "## Grouping and plotting",
    ("rng = np.random.default_rng(0)\n"
     "sales = pd.DataFrame({'region': rng.choice(['north', 'south', 'east'], 60),\n"
     "                      'units': rng.integers(1, 20, 60),\n"
     "                      'price': rng.normal(10, 2, 60).round(2)})\nsales.head()",),
    ("summary = sales.groupby('region').agg(units=('units', 'sum'), price=('price', 'mean'))\n"
     "summary",),
    ("summary['units'].plot(kind='bar', title='units by region')",),
    ("sales.plot.scatter(x='price', y='units')\nplt.show()",),
    ("summary.loc['west']", "raises-KeyError"),
    ("print(sales.shape)\nsales['revenue'] = sales['units'] * sales['price']\n"
     "round(sales['revenue'].sum(), 2)",),
    ("totals_by_region", "raises-NameError"),
    ("sales.pivot_table(values='revenue', index='region', aggfunc='mean').round(1)",),
]

SKLEARN = [
    "# Introducing scikit-learn\n\nThe estimator API on the iris and digits data that ship with "
    "scikit-learn.",
    ("import warnings\n\nimport matplotlib.pyplot as plt\nimport numpy as np\nimport pandas as pd\n"
     "from sklearn.datasets import load_digits, load_iris\n"
     "from sklearn.decomposition import PCA\n"
     "from sklearn.linear_model import LogisticRegression\n"
     "from sklearn.metrics import accuracy_score, confusion_matrix\n"
     "from sklearn.model_selection import cross_val_score, train_test_split\n"
     "from sklearn.naive_bayes import GaussianNB\n\n%matplotlib inline",),
    "## The iris data",
    ("iris = load_iris(as_frame=True)\niris.frame.head()",),
    ("X_iris = iris.data\ny_iris = iris.target\nX_iris.shape, y_iris.shape",),
    ("iris.frame.groupby('target').mean().round(2)",),
    ("Xtrain, Xtest, ytrain, ytest = train_test_split(X_iris, y_iris, random_state=1)\n"
     "print(len(Xtrain), 'train rows,', len(Xtest), 'test rows')",),
    "## A first model",
    ("model = GaussianNB()\nmodel.fit(Xtrain, ytrain)",),
    ("y_model = model.predict(Xtest)\naccuracy = accuracy_score(ytest, y_model)\naccuracy",),
    ("mat = confusion_matrix(ytest, y_model)\nfig, ax = plt.subplots(figsize=(3, 3))\n"
     "ax.imshow(mat, cmap='Blues')\nax.set_xlabel('predicted')\nax.set_ylabel('true')\nplt.show()",),
    "## A model that does not converge\n\nToo few iterations: scikit-learn warns in each cell that fits one.",
    ("short = LogisticRegression(max_iter=3)\nshort.fit(Xtrain, ytrain)\nshort.score(Xtest, ytest)", "warns"),
    ("shorter = LogisticRegression(max_iter=2)\nshorter.fit(Xtrain, ytrain)\nshorter.score(Xtest, ytest)",
     "warns"),
    ("def warn_small(n_rows):\n"
     "    if n_rows < 200:\n"
     "        warnings.warn('few rows: scores will be noisy', UserWarning)\n"
     "    return n_rows",),
    ("warn_small(len(Xtrain))", "warns"),
    ("scores = cross_val_score(GaussianNB(), X_iris, y_iris, cv=5)\nwarn_small(len(X_iris))\n"
     "scores.round(3)", "warns"),
    ("scores_by_name = {'nb': scores.mean()}\nscores_by_name['svm']", "raises-KeyError"),
    ("for fold, score in enumerate(scores):\n"
     "    if score < 1.0:\n"
     "        warnings.warn('fold below perfect', UserWarning)\n"
     "    print(f'fold {fold}: {score:.3f}')", "warns-once"),
    ("rows_per_fold = len(Xtest) // (len(Xtest) - len(ytest))", "raises-ZeroDivisionError"),
    "## Digits: dimensionality reduction",
    ("digits = load_digits()\ndigits.images.shape",),
    ("pca = PCA(n_components=2)\nprojected = pca.fit_transform(digits.data)\n"
     "print(digits.data.shape, '->', projected.shape)",),
    ("pca.explained_variance_ratio_.round(3)",),
    ("plt.scatter(projected[:, 0], projected[:, 1], c=digits.target, s=5, cmap='tab10')",),
    ("fig, axes = plt.subplots(2, 5, figsize=(5, 2))\n"
     "for ax, image, label in zip(axes.ravel(), digits.images, digits.target):\n"
     "    ax.imshow(image, cmap='binary')\n    ax.set_title(label)\n    ax.axis('off')\nplt.show()",),
    ("print(classifier_digits)", "raises-NameError"),
    ("pd.Series(digits.target).value_counts().sort_index().head()",),
]

NOTEBOOKS = {"numpy_handbook.ipynb": NUMPY, "pandas_handbook.ipynb": PANDAS,
             "sklearn_handbook.ipynb": SKLEARN}


def notebook(cells: list) -> nbformat.NotebookNode:
    """Markdown for a string, a code cell (with its tags) for a tuple ``(source, *tags)``."""
    made = nbformat.v4.new_notebook()
    made.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                   "language": "python"}
    made.metadata["language_info"] = {"name": "python"}
    for number, cell in enumerate(cells):
        if isinstance(cell, str):
            made.cells.append(nbformat.v4.new_markdown_cell(cell, id=f"md-{number}"))
        else:
            source, *tags = cell
            code = nbformat.v4.new_code_cell(source, id=f"code-{number}")
            if tags:
                code.metadata["tags"] = tags
            made.cells.append(code)
    nbformat.validate(made)
    return made


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(notebook(cells), HERE / name)
        print(name, sum(1 for c in cells if not isinstance(c, str)), "code cells")
