"""The proof case: three outlets' write-ups of one Lavrov statement become one story."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import replace
from functools import partial

import pytest
from behind_faults import pause_in_write, write_behind_with
from click.testing import CliRunner
from conftest import DATA, SEED_FEEDS, write_config

from aggregator.cli import main
from aggregator.cluster import HELD_BACK_ONE_TERM
from aggregator.config import load_config
from aggregator.fingerprint import count_words
from aggregator.pipeline import Aggregator
from aggregator.store import StagedWrites


def run_once(config_path, *extra) -> str:
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(config_path), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def story_rows(db_path):
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM article_stories ORDER BY article_id")]


def test_seeds_become_one_story_with_one_canonical(seed_config):
    output = run_once(seed_config)
    assert output.count("1 new") == 3
    rows = story_rows(load_config(seed_config).database)
    assert len(rows) == 3
    assert len({r["story_id"] for r in rows}) == 1
    assert sum(r["is_canonical"] for r in rows) == 1
    assert sorted(r["relation"] for r in rows) == ["canonical", "same_story", "same_story"]
    for row in rows:
        if row["relation"] == "same_story":
            assert 0 < row["similarity"] < 1
    assert {r["source"] for r in rows} == set(SEED_FEEDS)


def test_check_finds_each_signature_that_no_longer_matches_its_article(seed_config):
    run_once(seed_config)
    database = load_config(seed_config).database
    result = CliRunner().invoke(main, ["check", "--config", str(seed_config)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(database) as conn:
        _first, second, third = [r[0] for r in conn.execute("SELECT id FROM articles "
                                                            "ORDER BY id")]
        conn.execute("UPDATE articles SET text = 'The harbour bridge reopened on Monday "
                     "after repairs to its cables.' WHERE id = ?", [second])
        signature = conn.execute("SELECT salient_signature FROM article_fingerprints "
                                 "WHERE article_id = ?", [third]).fetchone()[0]
        conn.execute("UPDATE article_fingerprints SET salient_signature = ? "
                     "WHERE article_id = ?", [signature[:-1] + bytes([signature[-1] ^ 1]), third])
    result = CliRunner().invoke(main, ["check", "--config", str(seed_config)])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if "signature" in line] == [
        f"violation: every stored signature matches its article: article {article}: "
        "signature differs from its text" for article in (second, third)]
    result = CliRunner().invoke(main, ["check", "--config", str(seed_config),
                                       "--no-signatures"])
    assert result.exit_code == 0, result.output


def test_stories_command_shows_the_story_with_three_sources(seed_config):
    run_once(seed_config)
    result = CliRunner().invoke(main, ["stories", "--config", str(seed_config), "--json"])
    assert result.exit_code == 0, result.output
    stories = json.loads(result.output)
    assert len(stories) == 1
    assert stories[0]["source_count"] == 3
    assert len(stories[0]["members"]) == 3


@pytest.mark.parametrize(("arguments", "named"), [
    (["story", "9" * 23], "STORY_ID"),
    (["story", "0"], "STORY_ID"),
    (["explain", "9" * 23], "ARTICLE_ID"),
    (["stories", "--limit", "-5"], "--limit"),
    (["stories", "--limit", "9" * 23], "--limit"),
    (["stories", "--min-sources", "9" * 23], "--min-sources"),
    (["search", "lavrov", "--limit", "9" * 23], "--limit"),
    (["purge", "--older-than", "9" * 23 + "d", "--dry-run"], "--older-than"),
    (["run", "--tick", "0"], "--tick"),
    (["run", "--tick", "0.001"], "--tick"),
])
def test_numbers_no_store_can_hold_are_refused_naming_the_parameter(seed_config, arguments,
                                                                   named):
    """Beyond SQLite's 64-bit integers a query fails, beyond a century a time overflows, and
    a tick under a second only makes the scheduler skip and warn: such numbers are refused
    before anything runs, with the usage error."""
    run_once(seed_config)
    result = CliRunner().invoke(main, [*arguments, "--config", str(seed_config)])
    assert result.exit_code == 2 and named in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_second_pass_adds_nothing(seed_config):
    run_once(seed_config)
    second = run_once(seed_config, "--all")
    assert "0 new" in second and "1 new" not in second
    assert len(story_rows(load_config(seed_config).database)) == 3


def test_same_entry_from_another_feed_is_not_stored_twice(tmp_path, seed_config, seed_dir):
    rss = (seed_dir / "world-desk.rss.xml").read_text(encoding="utf-8")
    # Same GUID, different feed.
    (seed_dir / "mirror-guid.rss.xml").write_text(
        rss.replace("World Desk Daily", "Mirror One"), encoding="utf-8")
    # Same page with tracking parameters and another GUID.
    (seed_dir / "mirror-url.rss.xml").write_text(
        rss.replace("https://world-desk.example/?p=62c6014feff961ea", "mirror-2-local-id")
        .replace("rejects-key-part-of-deal</link>",
                 "rejects-key-part-of-deal/?utm_source=rss&amp;utm_medium=feed#comments</link>"),
        encoding="utf-8")
    sources = [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    sources += [{"name": "Mirror One", "url": str(seed_dir / "mirror-guid.rss.xml")},
                {"name": "Mirror Two", "url": str(seed_dir / "mirror-url.rss.xml")}]
    config = write_config(tmp_path / "mirrors.toml", sources)
    output = run_once(config)
    assert "Mirror One: ok, 1 entries, 0 new" in output
    assert "Mirror Two: ok, 1 entries, 0 new" in output
    assert len(story_rows(load_config(config).database)) == 3


def test_unrelated_stories_stay_out_of_the_lavrov_story(tmp_path, seed_dir):
    shutil.copy(DATA / "other_topics.rss.xml", seed_dir / "other.rss.xml")
    sources = [{"name": "Test Wire", "url": str(seed_dir / "other.rss.xml")}]
    sources += [{"name": n, "url": str(seed_dir / f)} for n, f in SEED_FEEDS.items()]
    config = write_config(tmp_path / "mixed.toml", sources)
    run_once(config)
    rows = story_rows(load_config(config).database)
    assert len(rows) == 8
    lavrov = {r["story_id"] for r in rows if r["source"] in SEED_FEEDS}
    assert len(lavrov) == 1
    members = [r for r in rows if r["story_id"] in lavrov]
    assert {r["source"] for r in members} == set(SEED_FEEDS)
    others = [r for r in rows if r["source"] == "Test Wire"]
    assert len({r["story_id"] for r in others}) == 5
    assert all(r["relation"] == "canonical" for r in others)


@pytest.mark.parametrize("write_behind", [False, True], ids=["in place", "behind"])
def test_dashboard_reads_while_a_pass_is_writing(seed_config, monkeypatch, write_behind):
    config = replace(load_config(seed_config), write_behind=write_behind)
    aggregator = Aggregator(config)
    # The write pauses with its rows written and its transaction open; in the write-behind
    # process it says so, and is released, through files.
    inside_write, release = seed_config.parent / "inside", seed_config.parent / "release"
    if write_behind:
        write_behind_with(aggregator, partial(pause_in_write, str(inside_write),
                                              str(release)))
    else:
        original = StagedWrites.write

        def slow_write(staged, conn, search_rows=None):
            original(staged, conn, search_rows)
            inside_write.touch()
            deadline = time.monotonic() + 10
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

        monkeypatch.setattr(StagedWrites, "write", slow_write)
    worker = threading.Thread(target=aggregator.run_pass)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not inside_write.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert inside_write.exists()
        reader = sqlite3.connect(config.database, timeout=1)
        rows = reader.execute("SELECT count(*) FROM article_stories").fetchone()
        assert rows == (0,)  # the uncommitted write is invisible, and nothing blocks
        reader.close()
    finally:
        release.touch()
        worker.join(10)
        aggregator.close()
    reader = sqlite3.connect(config.database)
    assert reader.execute("SELECT count(*) FROM article_stories").fetchone() == (3,)
    assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("clustering", ["on", "off"])
def test_lines_a_source_repeats_in_every_article_are_stripped(tmp_path, clustering):
    from html import escape

    template = "Follow our live coverage and get the morning briefing in your inbox every day"
    stories = [
        ("Harbour bridge reopens after repairs", "The harbour bridge reopened to traffic on "
         "Monday after eight months of repairs to its steel cables and deck."),
        ("Library extends opening hours", "The central library will stay open until ten in the "
         "evening from next month, the council said, after a survey of students."),
        ("Marathon draws record field", "A record twelve thousand runners started the city "
         "marathon on Sunday morning under clear skies and light winds."),
        ("Zoo welcomes twin panda cubs", "Keepers at the zoo announced the birth of twin panda "
         "cubs, the first born in the country, after a long breeding programme."),
    ]
    items = "".join(
        f"<item><title>{escape(title)}</title><link>https://local.example/{n}</link>"
        f"<guid>https://local.example/{n}</guid><description>{escape(f'<p>{body}</p><p>{template}</p>')}"
        f"</description></item>" for n, (title, body) in enumerate(stories))
    feed = tmp_path / "local.xml"
    feed.write_text(f"<rss version='2.0'><channel><title>Local</title>{items}</channel></rss>")
    config = write_config(tmp_path / "local.toml", [{"name": "Local", "url": str(feed)}],
                          extra="" if clustering == "on" else "[clustering]\nenabled = false")
    run_once(config)
    with sqlite3.connect(load_config(config).database) as conn:
        rows = conn.execute("SELECT text, word_count FROM articles").fetchall()
        stories_count = conn.execute("SELECT count(*) FROM stories").fetchone()[0]
    assert len(rows) == 4 and stories_count == 4
    assert all(template not in text for text, _words in rows)
    assert all(len(text.split()) > 10 for text, _words in rows)
    # Counted on the text as stored, without the template line.
    assert [words for _text, words in rows] == [count_words(text) for text, _words in rows]


def test_explain_shows_the_candidates_and_the_salient_terms_they_share(seed_config):
    run_once(seed_config)
    rows = story_rows(load_config(seed_config).database)
    joined = [r for r in rows if r["relation"] == "same_story"]
    assert joined
    for row in joined:
        result = CliRunner().invoke(main, ["explain", str(row["article_id"]),
                                           "--config", str(seed_config)])
        assert result.exit_code == 0, result.output
        assert f"matches story {row['story_id']}" in result.output
        candidate = next(line for line in result.output.splitlines()
                         if line.strip().startswith(f"candidate story {row['story_id']}:"))
        shared = candidate.split("shared salient terms: ")[1].split(", ")
        assert "lavrov" in shared and "ukrain" in shared


def explain_with_decision(seed_config, edit) -> tuple[dict, str]:
    """``explain`` of a joined seed article after ``edit`` changed its stored decision (as
    an earlier version, or another outcome, would have stored it); the decision and the
    output."""
    run_once(seed_config)
    database = load_config(seed_config).database
    with sqlite3.connect(database) as conn:
        article_id, decision = conn.execute(
            "SELECT id, decision FROM articles WHERE relation = 'same_story' LIMIT 1").fetchone()
        decision = json.loads(decision)
        edit(decision)
        conn.execute("UPDATE articles SET decision = ? WHERE id = ?",
                     [json.dumps(decision), article_id])
    result = CliRunner().invoke(main, ["explain", str(article_id), "--config", str(seed_config)])
    assert result.exit_code == 0, result.output
    return decision, result.output


def test_explain_reads_decisions_that_carry_their_shared_terms(seed_config):
    """Decisions stored by earlier versions list the shared terms themselves."""
    def as_stored_before(decision):
        for candidate in decision["candidates"]:
            del candidate["canonical_article_id"]
            candidate["shared_terms"] = ["stored", "terms"]

    _decision, output = explain_with_decision(seed_config, as_stored_before)
    assert "shared salient terms: stored, terms" in output


def test_explain_of_an_article_stored_without_a_decision(seed_config):
    run_once(seed_config)
    with sqlite3.connect(load_config(seed_config).database) as conn:
        conn.execute("UPDATE articles SET decision = NULL WHERE id = 1")
    result = CliRunner().invoke(main, ["explain", "1", "--config", str(seed_config)])
    assert result.exit_code == 0, result.output
    assert "decision when it arrived: not recorded" in result.output
    assert "candidate" not in result.output


def test_explain_says_why_a_story_above_its_threshold_was_held_back(seed_config):
    def held_back(decision):
        decision["candidates"][0].update(score=0.0, cosine=0.171, time_factor=1.0,
                                         threshold=0.08, held_back=HELD_BACK_ONE_TERM)

    decision, output = explain_with_decision(seed_config, held_back)
    assert (f"candidate story {decision['candidates'][0]['story_id']}: held back: "
            f"{HELD_BACK_ONE_TERM}; cosine 0.171 x time 1.000 (threshold 0.080)") in output


def test_clustering_off_keeps_stories_apart_until_a_recluster(tmp_path, seed_dir, caplog):
    sources = [{"name": name, "url": str(seed_dir / file)} for name, file in SEED_FEEDS.items()]
    off = write_config(tmp_path / "off.toml", sources, database=str(tmp_path / "s.db"),
                       extra="[clustering]\nenabled = false")
    run_once(off)
    rows = story_rows(tmp_path / "s.db")
    assert len({r["story_id"] for r in rows}) == 3
    assert {r["relation"] for r in rows} == {"canonical"}
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT count(*) FROM article_fingerprints").fetchone()[0] == 0
        assert conn.execute("SELECT value FROM meta WHERE key = 'documents'").fetchone()[0] == "0"
        assert conn.execute("SELECT count(*) FROM canonical_history").fetchone()[0] == 3
    for command in (["check"], ["explain", str(rows[0]["article_id"])]):
        result = CliRunner().invoke(main, [*command, "--config", str(off)])
        assert result.exit_code == 0, result.output
    assert "while clustering was off" in result.output
    refused = CliRunner().invoke(main, ["recluster", "--config", str(off)])
    assert refused.exit_code != 0 and "clustering is off" in refused.output

    on = write_config(tmp_path / "on.toml", sources, database=str(tmp_path / "s.db"))
    for turn_on in ("by a reload", "at start-up"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            if turn_on == "by a reload":
                aggregator = Aggregator(load_config(off))
                aggregator.reload(load_config(on))
            else:
                aggregator = Aggregator(load_config(on))
            aggregator.close()
        assert "3 articles of the window were stored while clustering was off" in caplog.text
    result = CliRunner().invoke(main, ["recluster", "--config", str(on)])
    assert result.exit_code == 0, result.output
    rows = story_rows(tmp_path / "s.db")
    assert len({r["story_id"] for r in rows}) == 1
    assert sorted(r["relation"] for r in rows) == ["canonical", "same_story", "same_story"]
    result = CliRunner().invoke(main, ["check", "--config", str(on)])
    assert result.exit_code == 0, result.output
    caplog.clear()
    with caplog.at_level("WARNING"):
        Aggregator(load_config(on)).close()
    assert "clustering was off" not in caplog.text
    with sqlite3.connect(tmp_path / "s.db") as conn:  # a member of a shared story must have one
        conn.execute("DELETE FROM article_fingerprints WHERE article_id = ?",
                     [rows[1]["article_id"]])
    result = CliRunner().invoke(main, ["check", "--config", str(on), "--no-signatures"])
    assert result.exit_code != 0
    assert f"article {rows[1]['article_id']} has no row in article_fingerprints" in result.output
