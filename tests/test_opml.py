from __future__ import annotations

from click.testing import CliRunner
from conftest import ROOT

from aggregator.cli import main
from aggregator.config import load_config
from aggregator.opml import read_opml

OPML = """<?xml version="1.0" encoding="utf-8"?>
<opml version="2.0"><head><title>My feeds</title></head><body>
  <outline text="World">
    <outline type="rss" text="Wire A" xmlUrl="https://a.example/feed.xml"/>
    <outline type="rss" text="Europe Brief" xmlUrl="https://eb.example/feed.json"
             category="/europe,/politics"/>
  </outline>
  <outline type="rss" title="Already here" xmlUrl="{existing}"/>
  <outline type="rss" text="No folder" xmlUrl="https://c.example/rss"/>
</body></opml>
"""


def test_import_appends_new_sources_keeps_the_file_and_skips_known_urls(tmp_path):
    config_path = tmp_path / "a.toml"
    original = ('# my comment\ndatabase = "a.db"\n[[sources]]\nname = "Europe Brief"\n'
                'url = "https://old.example/feed"\n')
    config_path.write_text(original)
    opml = tmp_path / "subs.opml"
    opml.write_text(OPML.format(existing="https://old.example/feed"))
    result = CliRunner().invoke(main, ["import-opml", "--config", str(config_path), str(opml)])
    assert result.exit_code == 0, result.output
    assert "added 3 sources" in result.output and "skipped 1" in result.output
    text = config_path.read_text()
    assert text.startswith(original)
    config = load_config(config_path, environ={})
    by_name = {s.name: s for s in config.sources}
    assert by_name["Wire A"].tags == ("world",)
    assert by_name["Europe Brief (2)"].tags == ("world", "europe", "politics")
    assert by_name["No folder"].tags == ()
    again = CliRunner().invoke(main, ["import-opml", "--config", str(config_path), str(opml)])
    assert "added 0 sources" in again.output and config_path.read_text() == text


def test_import_refuses_a_broken_file_and_leaves_the_config(tmp_path):
    config_path = tmp_path / "a.toml"
    config_path.write_text('database = "a.db"\n')
    bad = tmp_path / "bad.opml"
    bad.write_text("<opml><body><outline xmlUrl='ftp://nope.example/'/></body></opml>")
    result = CliRunner().invoke(main, ["import-opml", "--config", str(config_path), str(bad)])
    assert result.exit_code == 1 and "would break the configuration" in result.output
    assert config_path.read_text() == 'database = "a.db"\n'
    garbage = tmp_path / "garbage.opml"
    garbage.write_text("not xml")
    result = CliRunner().invoke(main, ["import-opml", "--config", str(config_path),
                                       str(garbage)])
    assert result.exit_code == 1 and "not a readable OPML file" in result.output


def test_export_round_trips_through_import(tmp_path):
    out = tmp_path / "out.opml"
    default = ROOT / "config" / "aggregator.toml"
    result = CliRunner().invoke(main, ["export-opml", "--config", str(default), "-o", str(out)])
    assert result.exit_code == 0, result.output
    subscriptions = read_opml(out)
    config = load_config(default, environ={})
    assert [(s.name, s.url, s.tags) for s in subscriptions] == [
        (s.name, s.url, s.tags) for s in config.sources]
