from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from aggregator.cli import main
from aggregator.evaluate import score_clustering

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from offline_baseline import greedy_centroid  # noqa: E402


@pytest.mark.parametrize(("gold", "predicted", "bcubed_f1", "pairwise_f1"), [
    ({"a": 1, "b": 1, "c": 2}, {"a": "x", "b": "x", "c": "y"}, 1.0, 1.0),
    ({"a": 1, "b": 1, "c": 1}, {"a": "x", "b": "y", "c": "z"}, 0.5, 0.0),
    ({"a": 1, "b": 2, "c": 3}, {"a": "x", "b": "x", "c": "x"}, 0.5, 0.0),
    ({"a": 1, "b": 1, "c": 2, "d": 2}, {"a": "x", "b": "x", "c": "x", "d": "y"},
     0.7059, 0.4),
])
def test_scores(gold, predicted, bcubed_f1, pairwise_f1):
    scores = score_clustering(gold, predicted)
    assert scores.bcubed_f1 == pytest.approx(bcubed_f1, abs=1e-3)
    assert scores.pairwise_f1 == pytest.approx(pairwise_f1, abs=1e-3)


ARTICLES = [
    ("1", "quake", "Earthquake shakes coastal city", "A magnitude 6.8 earthquake shook the "
     "coastal city early on Monday, toppling buildings and cutting power to thousands."),
    ("2", "quake", "Strong earthquake hits coastal city, buildings collapse",
     "Buildings collapsed and power was cut after a strong 6.8 magnitude earthquake struck the "
     "coastal city before dawn on Monday."),
    ("3", "final", "Champions win cup final on penalties", "The champions won the cup final "
     "on penalties after a goalless draw, their goalkeeper saving two spot kicks."),
]


def test_eval_command_prints_scores_and_writes_assignments(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "cluster": c, "title": t, "text": x,
                                          "source": f"s{i}", "published": None, "url": None})
                              for i, c, t, x in ARTICLES) + "\n", encoding="utf-8")
    out = tmp_path / "assign.tsv"
    result = CliRunner().invoke(main, ["eval", str(path), "--assignments", str(out), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output.strip().splitlines()[-1])
    assert scores["articles"] == 3 and scores["bcubed_f1"] == 1.0
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert [line[0] for line in lines] == ["1", "2", "3"]
    assert lines[0][1] == lines[1][1] != lines[2][1]


def test_eval_refuses_assignments_in_a_missing_directory_before_clustering(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text('{"id": "1", "cluster": "a", "title": "t", "text": "x"}\n{oops\n')
    out = tmp_path / "missing" / "assign.tsv"
    result = CliRunner().invoke(main, ["eval", str(path), "--assignments", str(out)])
    # A usage error (2) naming the directory, not the bad line of the file: nothing ran.
    assert result.exit_code == 2, result.output
    assert "--assignments" in result.output and str(out.parent) in result.output
    assert "Traceback" not in result.output


def test_eval_names_an_assignments_file_it_cannot_write(tmp_path):
    lines = "\n".join(json.dumps({"id": i, "cluster": c, "title": t, "text": x,
                                  "source": f"s{i}", "published": None, "url": None})
                      for i, c, t, x in ARTICLES) + "\n"
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    first.write_text(lines, encoding="utf-8")
    second.write_text(lines, encoding="utf-8")
    # With several inputs each file's assignments go to a name of their own: here the
    # second one's is a directory.
    taken = tmp_path / "assign.two.tsv"
    taken.mkdir()
    result = CliRunner().invoke(main, ["eval", str(first), str(second), "--assignments",
                                       str(tmp_path / "assign.tsv")])
    assert result.exit_code == 1, result.output
    assert f"{taken}: cannot write the assignments" in result.output
    assert (tmp_path / "assign.one.tsv").read_text().count("\n") == 3


@pytest.mark.parametrize(("setting", "says"), [
    ("same_story_threshold=nan", "expected a finite number"),
    ("window_days=inf", "expected a finite number"),
    ("num_perm=5", "must be between 16 and 1024"),
    ("canonical_policy=earliest,bogus", "unknown criterion 'bogus'"),
    ("enabled=maybe", "'maybe' is not a bool"),
    ("colour=blue", "expected KEY=VALUE"),
])
def test_eval_checks_its_settings_as_the_configuration_does(tmp_path, setting, says):
    path = tmp_path / "tiny.jsonl"
    path.write_text('{"id": "1", "cluster": "a", "title": "t", "text": "x"}\n')
    result = CliRunner().invoke(main, ["eval", str(path), "--set", setting])
    assert result.exit_code == 2 and says in result.output, result.output


def test_eval_reads_false_as_false(tmp_path):
    """With clustering off every article is a story of its own (bool("false") is True)."""
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "cluster": c, "title": t, "text": x})
                              for i, c, t, x in ARTICLES) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", str(path), "--json", "--set", "enabled=false"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["bcubed_recall"] < 1.0


def test_eval_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "cluster": "a", "title": "t", "text": "x"}\n{oops\n')
    result = CliRunner().invoke(main, ["eval", str(path)])
    assert result.exit_code == 1
    assert f"{path}:2" in result.output


def _explicit_greedy_centroid(vectors: np.ndarray, threshold: float) -> list[int]:
    """The baseline as its description reads: centroids summed and compared directly."""
    centroids: list[np.ndarray] = []
    clusters = []
    for vector in vectors:
        cosines = [float(c @ vector / np.linalg.norm(c)) for c in centroids]
        if cosines and max(cosines) >= threshold:
            best = int(np.argmax(cosines))
            centroids[best] = centroids[best] + vector
            clusters.append(best)
        else:
            clusters.append(len(centroids))
            centroids.append(vector.copy())
    return clusters


@pytest.mark.parametrize(("vectors", "threshold", "clusters"), [
    # Each alone: no two vectors share a dimension.
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], 0.1, [0, 1, 2]),
    # b is 0.8 from a: alone at 0.9; c is 0.96 from b and joins it.
    ([[1, 0], [0.8, 0.6], [0.6, 0.8]], 0.9, [0, 1, 1]),
    # At 0.7 b joins a, and c is 0.82 from their centroid (not 0.6 from a alone).
    ([[1, 0], [0.8, 0.6], [0.6, 0.8]], 0.7, [0, 0, 0]),
])
def test_offline_baseline_clusters_by_centroid(vectors, threshold, clusters):
    rows = np.array(vectors, dtype=float)
    assert greedy_centroid(rows @ rows.T, threshold) == clusters


@pytest.mark.parametrize("threshold", [0.2, 0.4, 0.6])
def test_offline_baseline_matches_explicit_centroids(threshold):
    """The baseline never builds a centroid; it must choose as if it did."""
    generator = np.random.default_rng(3)
    topics = generator.normal(size=(5, 40))
    rows = np.array([topics[i % 5] + generator.normal(size=40) for i in range(60)])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    expected = _explicit_greedy_centroid(rows, threshold)
    assert greedy_centroid(rows @ rows.T, threshold) == expected
    assert 1 < len(set(expected)) < len(rows)


def test_the_stream_quality_benchmark_finds_every_stored_article_in_the_replayed_stream(
        tmp_path, capsys, monkeypatch):
    """``benchmarks/stream_quality.py`` scores a stored synthetic stream against the stories
    its generator wrote: every stored article must be found again by its GUID, and a store
    of another stream is refused, not scored."""
    from itertools import islice

    from ingest import ingest, make_aggregator
    from stream import SyntheticStream
    from stream_quality import main as stream_quality

    from aggregator.config import ClusteringSettings

    stream = SyntheticStream(seed=5, per_day=2000)
    aggregator = make_aggregator(tmp_path, "stream", stream, ClusteringSettings())
    ingest(aggregator, list(islice(stream, 400)))
    aggregator.close()
    database = str(tmp_path / "stream.sqlite")
    monkeypatch.setattr(sys, "argv", ["stream_quality.py", database, "--seed", "5",
                                      "--per-day", "2000"])
    stream_quality()
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["articles"] == 400 and len(result["bcubed_f1_by_tenth"]) == 10
    assert result["stories_found"] <= 400 and 0.5 < result["bcubed_f1"] <= 1.0
    monkeypatch.setattr(sys, "argv", ["stream_quality.py", database, "--seed", "6",
                                      "--per-day", "2000"])
    with pytest.raises(SystemExit, match="not in the stream of seed 6"):
        stream_quality()
