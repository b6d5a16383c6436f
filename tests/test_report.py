"""finetune_helpers.report: exact parameter counts, stable vs measured columns, table round trip."""

import json

import paddle
import pytest
from paddle import nn
from paddle.vision.models import resnet18

from finetune_helpers.report import ReportRow, ReportTable, report
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


def test_table_frame_markdown_and_json_round_trip(tmp_path):
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

    path = table.save_json(tmp_path / "rows" / "chapter3.json")
    loaded = ReportTable.load_json(path)
    assert loaded.rows == table.rows and isinstance(loaded.rows[0], ReportRow)
    assert [p.name for p in path.parent.iterdir()] == ["chapter3.json"]  # no temporary left
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="re-run the chapter"):
        ReportTable.load_json(tmp_path / "old.json")
    with pytest.raises(ValueError, match="not a report row"):
        table.add({"strategy": "x"})
