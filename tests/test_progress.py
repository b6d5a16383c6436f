"""finetune_helpers.progress: one switch turns every progress bar off."""

from finetune_helpers import progress


def test_progress_env_switch(monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert progress.progress_enabled() is False and progress.progress_enabled(True) is True
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.progress_enabled() is True and progress.progress_enabled(False) is False
    monkeypatch.delenv(progress.PROGRESS_ENV)
    assert progress.progress_enabled() is True
    assert progress.progress_bar(3, "x", enabled=False).disable
