"""Linear probes: how much of a task a frozen representation exposes to a linear classifier.

Part I asks which depth of a network "knows" a task. A small neural head trained per depth
would bring in a learning rate, epochs, initialisation and batch order, and a depth could look
bad only because its head trained badly; a convex probe has one optimum for a given
regularisation, so its accuracy depends on the features alone. The probe is scikit-learn's
logistic regression on standardised features (written here once because two chapters use it;
the grids' baselines in :mod:`finetune_helpers.grids` fit it without standardising, as their
records were made).
"""

from __future__ import annotations

from typing import Any


def probe_accuracy(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, C: float) -> float:
    """Test accuracy (%) of a multinomial logistic regression with L2 strength ``1 / C`` on
    standardised features (mean 0, variance 1 per feature, fitted on the training rows).

    One BLAS thread: the problems are tiny, extra threads only add overhead, and a thread count
    can change the last bits of the solver's sums.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"features and labels differ in length (train {len(x_train)} vs "
                         f"{len(y_train)}, test {len(x_test)} vs {len(y_test)}); pass one label "
                         "per feature row")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with threadpool_limits(1):
        clf.fit(x_train, y_train)
    return 100.0 * float(clf.score(x_test, y_test))
