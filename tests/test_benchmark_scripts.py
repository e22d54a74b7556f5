"""The benchmark scripts run, on tiny inputs: each hooks into the package's internals (the
steps it times, the processes it measures), which a change can leave behind."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT, requires_kernels


def _last_json(*arguments: str) -> dict:
    done = subprocess.run([sys.executable, *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_writer_benchmark_times_every_step():
    result = _last_json("benchmarks/writer.py", "--feeds", "5", "--detail")
    assert result["articles"] == 100
    stages = result["stages_ms_per_article"]
    assert stages["propose"] > 0 and stages["write staged rows"] > 0
    assert "commit: canonical election" in stages


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_the_ingest_benchmark_reports_every_process(tmp_path, write_behind):
    result = _last_json("benchmarks/ingest.py", "--sizes", "400", "--naive-sample", "40",
                        *(["--write-behind"] if write_behind else []))
    assert result["articles"] == 400 and result["speedup_vs_naive"] > 0
    assert result["worker_peak_rss_mb"] > 0
    if write_behind:
        assert result["behind_peak_rss_mb"] > 0 and result["behind_cpu_ms_per_article"] > 0
    else:
        assert result["behind_peak_rss_mb"] is None


@requires_kernels
def test_the_restart_benchmark_loads_the_same_window_both_ways():
    # 600 articles: enough band keys in one chunk for a bulk load, whose parts are sorted.
    result = _last_json("benchmarks/restart.py", "--articles", "600", "--rounds", "2")
    assert result["articles"] == 600 and result["differing"] == []
    assert set(result["steps_s"]) == {"band keys", "vectors", "signatures", "index parts",
                                      "index sort"}
    assert all(seconds["compiled"] > 0 and seconds["numpy"] > 0
               for seconds in result["steps_s"].values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_worker_benchmark_measures_the_daemons_worker():
    # Ten entries of 120 words a feed: documents long enough to be parsed in a worker.
    result = _last_json("benchmarks/workers.py", "--feeds", "4", "--entries", "10",
                        "--rounds", "1")
    assert result["feeds"] == 4
    (peak,), (cpu,) = result["this"]["worker_peak_rss_mb"], result["this"]["worker_cpu_s"]
    assert peak > 20 and cpu > 0


def test_the_queries_benchmark_times_the_dashboards_and_the_apps_calls(tmp_path):
    result = _last_json("benchmarks/queries.py", "--articles", "3000", "--runs", "20",
                        "--fetch-polls", "30", "--keep", str(tmp_path / "q.sqlite"))
    assert result["articles"] >= 3000 and result["worst_p95_ms"] > 0
    assert len(result["app_calls"]) == 9 and result["apps_worst_p95_ms"] > 0
    assert all(call["p95_ms"] >= call["median_ms"] for call in result["app_calls"].values())
    # The store is left as a daily reader leaves it, and the timed marks are undone.
    with sqlite3.connect(tmp_path / "q.sqlite") as conn:
        # The fetch attempts added past the writer are counted, as the daily view shows.
        assert conn.execute("SELECT sum(fetches) FROM daily_fetches").fetchone()[0] == 6000
        assert conn.execute("SELECT count(*) FROM story_marks WHERE read_at IS NULL "
                            "AND saved_at IS NULL").fetchone()[0] == 0


def test_the_search_benchmark_finds_the_same_stories_where_few_articles_match():
    result = _last_json("benchmarks/search.py", "--articles", "2000", "--runs", "5",
                        "--word", "the")
    assert result["articles"] >= 2000 and result["newest"] == 5000
    assert set(result["queries"]) == {"one word", "eight words OR'ed", "the"}
    assert all(q["newest"]["median_ms"] > 0 and q["every_match"]["median_ms"] > 0
               for q in result["queries"].values())
    # Fewer articles match than are ranked: both statements find the same stories.
    assert all(q["differing_below_the_bound"] == 0 for q in result["queries"].values())


def test_the_retention_benchmark_keeps_the_store_level_beside_one_that_grows():
    result = _last_json("benchmarks/retention.py", "--days", "10", "--per-day", "20",
                        "--tables")
    assert result["purged_articles"] > 0 and result["purge_articles_per_s"] > 0
    assert result["kept_articles"] + result["purged_articles"] == result["articles"]
    assert result["used_mb_with_retention"] < result["used_mb_without_retention"]


def test_two_stores_are_compared_on_the_columns_both_have(tmp_path):
    # A version compared with the one before a migration that added a column
    # (``turns.py --against``): the rows still compare on every other column.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from equivalence import compare

    from aggregator.store import Store

    paths = [tmp_path / "new.db", tmp_path / "old.db"]
    for path in paths:
        store = Store(str(path))
        with store.transaction() as conn:
            conn.execute("INSERT INTO term_stats (term, document_frequency, prior_fraction) "
                         "VALUES ('harbour', 2, 0.001)")
        store.close()
    old = sqlite3.connect(paths[1])
    old.execute("ALTER TABLE term_stats DROP COLUMN purged_frequency")
    old.commit()
    assert set(compare(*paths)["differing_rows"].values()) == {0}
    old.execute("UPDATE term_stats SET document_frequency = 3")
    old.commit()
    old.close()
    assert compare(*paths)["differing_rows"]["term_stats"] == 2


def test_the_close_calls_benchmark_counts_missed_joins_against_the_calls(tmp_path):
    texts = [("1", "storm", "Storm floods coastal city", "A storm flooded the coastal city "
              "before dawn, closing roads and the harbour."),
             ("2", "storm", "Harbour shut as storm hits coast", "The harbour was shut after "
              "a storm hit the coast overnight, officials said."),
             ("3", "cup", "Champions win cup final", "The champions won the cup final on "
              "penalties after a goalless draw.")]
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "cluster": c, "title": t, "text": x,
                                          "source": f"s{i}", "published": None, "url": None})
                              for i, c, t, x in texts) + "\n", encoding="utf-8")
    [row] = _last_json("benchmarks/close_calls.py", str(path))["files"]
    assert row["articles"] == 3 and row["missed_story_pairs"] in (0, 1)
    assert 0 <= row["one_click_away"] <= row["missed_story_pairs"]
    assert 0 <= row["closest_call_right"] <= row["stories_with_close_calls"] <= 3
