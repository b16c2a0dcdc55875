"""The journal of judged windows (pipeline/io/journal.py): what makes a re-emitted verdict identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from pipeline.io import journal as journal_mod
from pipeline.io.journal import JournalError, VerdictJournal


def test_windows_after_a_snapshot_come_back_with_the_config_that_judged_them(tmp_path: Path) -> None:
    a, b = make_config(stage="10%"), make_config(stage="25%")
    j = VerdictJournal(tmp_path)
    j.append([(60.0, a), (120.0, a)])
    j.append([(180.0, a), (240.0, b), (300.0, b)])  # a stage change inside one batch
    j.close()
    again = VerdictJournal(tmp_path)
    got = again.emitted_after(120.0, 60)
    assert [(end, c.stage) for end, c in got] == [(180.0, "10%"), (240.0, "25%"), (300.0, "25%")]
    assert [end for end, _ in again.emitted_after(None, 60)] == [60.0, 120.0, 180.0, 240.0, 300.0]
    assert again.emitted_after(300.0, 60) == []
    # each config is stored once, however many lines use it
    assert (tmp_path / journal_mod.JOURNAL_FILE).read_text().count('"pickle"') == 2


def test_a_last_line_torn_by_a_crash_is_ignored_and_other_damage_is_named(tmp_path: Path) -> None:
    j = VerdictJournal(tmp_path)
    j.append([(60.0, make_config())])
    j.close()
    path = tmp_path / journal_mod.JOURNAL_FILE
    with path.open("ab") as f:
        f.write(b'{"from": 120.0, "thro')  # the write a kill -9 cut short
    assert [end for end, _ in VerdictJournal(tmp_path).emitted_after(None, 60)] == [60.0]
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(JournalError, match=r"verdicts\.journal: line 1 is damaged"):
        VerdictJournal(tmp_path)


def test_compaction_keeps_what_the_snapshot_before_last_did_not_cover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "COMPACT_BYTES", 200)
    a, b = make_config(stage="10%"), make_config(stage="50%")
    j = VerdictJournal(tmp_path)
    for w in range(1, 31):
        j.append([(60.0 * w, a if w < 20 else b)])
        if w % 5 == 0:
            j.snapshot(60.0 * w)
    j.close()
    # snapshots at 1200, 1500, 1800: everything after 1200 (two back) is kept, nothing before
    again = VerdictJournal(tmp_path)
    assert [end for end, _ in again.emitted_after(None, 60)] == [60.0 * w for w in range(21, 31)]
    assert {c.stage for _, c in again.emitted_after(None, 60)} == {"50%"}
    assert (tmp_path / journal_mod.JOURNAL_FILE).read_text().count('"pickle"') == 1
