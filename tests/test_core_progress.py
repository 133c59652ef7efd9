"""Progress bars nest (a stage's bar inside the pipeline's) without rich's one-live-display error."""

from __future__ import annotations

from edgekit import progress


def test_nested_tasks(monkeypatch):
    monkeypatch.delenv("EDGEKIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("EDGEKIT_PROGRESS", "1")
    assert progress.enabled()
    seen = []
    with progress.task("outer") as outer:
        with progress.task("inner", total=3) as inner:
            for i in progress.track(range(3), "innermost"):
                inner(1)
                seen.append(i)
        outer(1)
    assert seen == [0, 1, 2] and progress._active is None


def test_disabled(monkeypatch):
    monkeypatch.setenv("EDGEKIT_NO_PROGRESS", "1")
    assert not progress.enabled()
    assert list(progress.track([1, 2], "x")) == [1, 2]
