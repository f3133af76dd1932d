"""A killed ``rcig eval --json FILE`` goes on where it stopped: the networks it scored are
kept in FILE.partial and not trained again, and the scores are those of a run never killed."""

import json

import pytest

from rcig.evaluation import evaluate, protocol
from rcig.evaluation.baselines import baseline_set
from rcig.evaluation.suite import ScoreBook
from rcig.io import save

QUICK = dict(models=2, steps=20, test_limit=100, progress=False)
TRAIN = protocol.train_models


class Killed(Exception):
    pass


@pytest.fixture
def set_file(tmp_path):
    save(baseline_set("digits", 1, method="random", seed=0), tmp_path / "set.safetensors")
    return tmp_path / "set.safetensors"


def counting_training(monkeypatch, kill_after: int | None = None) -> list:
    """Spy on the protocol's training: the seeds trained, in order; raise Killed when the
    network after ``kill_after`` networks would start."""
    trained = []

    def spy(*args, seeds, **kwargs):
        if kill_after is not None and len(trained) == kill_after:
            raise Killed
        trained.append((kwargs["augment"], *seeds))
        return TRAIN(*args, seeds=seeds, **kwargs)

    monkeypatch.setattr(protocol, "train_models", spy)
    return trained


def test_a_killed_eval_goes_on_where_it_stopped_and_scores_as_an_unbroken_run(set_file, tmp_path, monkeypatch):
    whole = evaluate(set_file, json_out=tmp_path / "whole.json", **QUICK)
    assert not list(tmp_path.glob("whole.json.partial*"))  # removed once the scores are written

    counting_training(monkeypatch, kill_after=3)
    with pytest.raises(Killed):
        evaluate(set_file, json_out=tmp_path / "again.json", **QUICK)
    assert not (tmp_path / "again.json").exists()
    assert len(json.loads((tmp_path / "again.json.partial").read_text())["networks"]) == 3

    trained = counting_training(monkeypatch)
    resumed = evaluate(set_file, json_out=tmp_path / "again.json", **QUICK)
    assert trained == [(True, 1)]  # only the fourth network (aug, seed 1) trains again
    for setting in ("no_aug", "aug"):
        assert resumed[setting]["accs"] == whole[setting]["accs"]
    assert not list(tmp_path.glob("again.json.partial*"))


def test_networks_are_reused_only_for_the_same_set_and_protocol(set_file, tmp_path, monkeypatch):
    counting_training(monkeypatch, kill_after=2)  # no_aug seeds 0 and 1 recorded
    with pytest.raises(Killed):
        evaluate(set_file, json_out=tmp_path / "s.json", **QUICK)

    trained = counting_training(monkeypatch, kill_after=1)
    with pytest.raises(Killed):  # another protocol (more steps): nothing reused
        evaluate(set_file, json_out=tmp_path / "s.json", **{**QUICK, "steps": 21})
    assert trained == [(False, 0)]

    trained = counting_training(monkeypatch)  # more networks and a later first seed: the shared ones reused
    report = evaluate(set_file, json_out=tmp_path / "s.json", **{**QUICK, "models": 3, "seed": 1})
    assert trained == [(False, 2), (False, 3), (True, 1), (True, 2), (True, 3)]
    assert len(report["no_aug"]["accs"]) == 3


def test_an_unwritable_record_warns_once_and_the_eval_goes_on(set_file, tmp_path, capsys):
    (tmp_path / "s.json.partial").mkdir()  # in the way of the record's file
    report = evaluate(set_file, json_out=tmp_path / "s.json", **QUICK)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "s.json.partial" in warnings[0], warnings
    assert len(report["aug"]["accs"]) == 2 and (tmp_path / "s.json").exists()


def test_a_book_reads_every_ranks_file_and_skips_torn_ones(tmp_path):
    from rcig.evaluation.protocol import Scored

    ScoreBook(tmp_path / "s.json", rank=0).put("a/no_aug/0", Scored(0.5, False))
    ScoreBook(tmp_path / "s.json", rank=1).put("a/aug/0", Scored(0.25, True))
    (tmp_path / "s.json.partial.rank2").write_text('{"networks": {"a/aug/1"')  # torn by a kill
    book = ScoreBook(tmp_path / "s.json")
    assert book.get("a/no_aug/0") == Scored(0.5, False) and book.get("a/aug/0") == Scored(0.25, True)
    assert book.get("a/aug/1") is None and len(book) == 2
    book.close()
    assert not list(tmp_path.iterdir())
