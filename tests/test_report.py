"""finetune_helpers.report: exact parameter counts, stable vs measured columns, the table, the
standard error of an accuracy and the confusion-matrix figure."""

import math

import matplotlib
import numpy as np
import paddle
import pytest
from paddle import nn
from paddle.vision.models import resnet18

from finetune_helpers.report import (ReportTable, binomial_se, confusion_figure,
                                     confusion_matrix, report)
from finetune_helpers.train import History


def classification_history():
    h = History(task="classification")
    h.epochs = [{"epoch": 0, "train_loss": 1.2, "eval_accuracy": 0.75, "eval_loss": 0.9,
                 "seconds": 3.0, "examples": 512, "steps": 16},
                {"epoch": 1, "train_loss": 0.8, "eval_accuracy": 0.8125, "eval_loss": 0.7,
                 "seconds": 5.26, "examples": 512, "steps": 16}]
    h.peak_rss_mib, h.start_rss_mib = 812.34, 700.0
    return h


def head_only_resnet():
    paddle.seed(0)
    model = resnet18(pretrained=False, num_classes=10)
    for name, p in model.named_parameters():
        p.stop_gradient = not name.startswith("fc.")
    return model


def counts(model):
    row = report("x", model, classification_history(), budget="b", show=None)
    return row["trainable_params"], row["total_params"]


def test_counts_exclude_batchnorm_statistics_and_shared_weights():
    model = resnet18(pretrained=False)
    # torchvision's well-known size; Paddle's parameters() also hold 9,600 BatchNorm statistics
    assert counts(model) == (11_689_512, 11_689_512)
    assert sum(p.size for p in model.parameters()) == 11_699_112
    shared = nn.Linear(3, 3)
    assert counts(nn.Sequential(shared, nn.ReLU(), shared)) == (12, 12)
    assert counts(head_only_resnet()) == (5_130, 11_181_642)


def test_report_prints_stable_part_and_returns_full_row(capsys):
    model = head_only_resnet()
    row = report("head only", model, classification_history(), budget="512 examples x 2 epochs")
    out = capsys.readouterr().out
    assert out == ("head only | trainable 5,130 of 11,181,642 (0.0459%) | accuracy 81.25% | "
                   "512 examples x 2 epochs\n")
    assert row["trainable_pct"] == 100 * 5_130 / 11_181_642  # exact, rounded only for display
    assert row.stable() == {"strategy": "head only", "trainable_params": 5_130,
                            "total_params": 11_181_642, "trainable_pct": 100 * 5_130 / 11_181_642,
                            "metric_name": "accuracy", "metric": 81.25,
                            "budget": "512 examples x 2 epochs"}
    assert row.measured() == {"seconds_per_epoch": 4.1, "peak_memory_mib": 812.34,
                              "peak_gpu_mib": None}
    row.show("measured")
    assert capsys.readouterr().out == "head only | 4.1 s/epoch | peak memory 812.3 MiB\n"
    assert "4.1 s/epoch" in row.line("all") and "81.25%" in row.line("all")
    report("quiet", model, classification_history(), budget="b", show=None)
    assert capsys.readouterr().out == ""


def test_report_metric_choices():
    model = nn.Linear(2, 2)
    lm = History(task="lm", epochs=[{"epoch": 0, "train_loss": 3.3, "eval_loss": 3.2581,
                                     "eval_perplexity": 25.9999, "seconds": 1.0}])
    assert report("lm", model, lm, budget="b", show=None)["metric"] == 26.0
    assert report("lm", model, lm, budget="b", show=None, metric_name="loss")["metric"] == 3.26
    no_eval = History(task="classification", epochs=[{"epoch": 0, "train_loss": 0.5,
                                                      "seconds": 1.0}])
    row = report("x", model, no_eval, budget="b", show=None)
    assert (row["metric_name"], row["metric"]) == ("train_loss", 0.5)
    with pytest.raises(ValueError, match="pass eval_loader= to fit"):
        report("x", model, no_eval, budget="b", metric_name="accuracy")
    with pytest.raises(ValueError, match="metric_name must be one of"):
        report("x", model, no_eval, budget="b", metric_name="f1")
    with pytest.raises(ValueError, match="history is empty"):
        report("x", model, History(task="lm"), budget="b")


def test_table_frame_and_markdown():
    table = ReportTable()
    model = head_only_resnet()
    table.add(report("head only", model, classification_history(), budget="512 x 2", show=None))
    for p in model.parameters():
        p.stop_gradient = False
    table.add(report("full | all", model, classification_history(), budget="512 x 2", show=None))
    assert len(table) == 2
    frame = table.frame()
    assert list(frame["trainable_params"]) == [5_130, 11_181_642]
    assert "seconds_per_epoch" in frame.columns
    assert "seconds_per_epoch" not in table.frame(stable=True).columns
    md = table.markdown(stable=True).splitlines()
    assert md[0] == "| strategy | trainable | total | trainable % | metric | budget |"
    assert md[3] == "| full \\| all | 11,181,642 | 11,181,642 | 100% | accuracy 81.25% | 512 x 2 |"
    assert table.markdown().splitlines()[2].endswith("| 4.1 | 812.3 |")
    with pytest.raises(ValueError, match="not a report row"):
        table.add({"strategy": "x"})


# ---------------------------------------------------------------------------------------------
# The uncertainty of an accuracy, and where the errors are

def test_binomial_se_is_what_the_chapters_compute():
    # chapters 03/04: np.sqrt(a * (1 - a) / 300), bit for bit
    for a in (0.8, 0.6133333333333333, 0.5):
        assert binomial_se(a, 300) == np.sqrt(a * (1 - a) / 300)
    # chapter 01: "standard error of one accuracy near 80% on 300 test images: 2.3 points"
    assert f"{100 * binomial_se(0.8, 300):.1f}" == "2.3"
    assert binomial_se(1.0, 50) == 0.0 and binomial_se(0.5, 1) == 0.5
    assert binomial_se(np.float32(0.6), np.int64(300)) == pytest.approx(math.sqrt(0.24 / 300))


@pytest.mark.parametrize("accuracy, n, message", [
    (81.25, 300, r"fraction in \[0, 1\] \(0.81, not 81\)"),
    (-0.1, 300, "fraction"),
    (0.8, 0, "number of examples scored"),
    (0.8, 2.5, "number of examples scored"),
])
def test_binomial_se_rejects_percentages_and_bad_counts(accuracy, n, message):
    with pytest.raises(ValueError, match=message):
        binomial_se(accuracy, n)


def test_confusion_matrix_counts_true_by_predicted():
    labels, predicted = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    assert confusion_matrix(labels, predicted, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"class indices in 0\.\.1.*logits.argmax"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix([0, 1], [0.2, 0.9], 2)


def test_confusion_figure_shows_counts_names_and_accuracy():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, predicted = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2])
    fig = confusion_figure(labels, predicted, ["cat", "dog", "bird"])
    ax = fig.axes[0]
    assert ax.get_title() == "held-out confusion matrix (66.7% correct)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "bird"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    assert cells == {(0, 0): "1", (0, 1): "1", (1, 1): "1", (2, 0): "1", (2, 2): "2"}
    np.testing.assert_array_equal(ax.images[0].get_array(), confusion_matrix(labels, predicted, 3))
    # drawing into an existing axes: its figure comes back, the title is the caller's
    outer, (left, right) = plt.subplots(1, 2)
    assert confusion_figure(labels, predicted, ["a", "b", "c"], ax=right, title="run 1",
                            colorbar=False) is outer
    assert right.get_title() == "run 1" and not left.images
    plt.close("all")
