from __future__ import annotations

import pytest
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


def test_import_keeps_the_files_line_endings_and_byte_order_mark(tmp_path):
    config_path = tmp_path / "a.toml"
    config_path.write_bytes('\ufeff# mine\r\ndatabase = "a.db"\r\n'.encode())
    opml = tmp_path / "subs.opml"
    opml.write_text(OPML.format(existing="https://old.example/feed"))
    result = CliRunner().invoke(main, ["import-opml", "--config", str(config_path), str(opml)])
    assert result.exit_code == 0, result.output
    written = config_path.read_bytes()
    assert written.startswith('\ufeff# mine\r\ndatabase = "a.db"\r\n'.encode())
    assert b"\n" not in written.replace(b"\r\n", b"")
    assert len(load_config(config_path, environ={}).sources) == 4


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
    unreadable = tmp_path / "unreadable.opml"
    unreadable.write_text("<opml><body><outline xmlUrl='http://[::1/feed'/></body></opml>")
    result = CliRunner().invoke(main, ["import-opml", "--config", str(config_path),
                                       str(unreadable)])
    assert result.exit_code == 1 and "is not a URL" in result.output, result.output
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


LAYOUT = '''# my aggregator
database = "a.db"   # the store

[clustering]
window_days = 7

# Wire A: the fastest wire
[[sources]]
name = "Wire A"
url = "https://a.example/feed.xml"   # moved in 2025
tags = ["world"]

# Europe Brief, daily
[[sources]]
name = "Europe Brief"
url = "https://eb.example/feed.json"
enabled = true  # keep

[[sources]]
name = "Last"
url = "https://c.example/rss"
[http]
enabled = false
'''


@pytest.mark.parametrize("command, name, expected", [
    ("disable", "Wire A",
     LAYOUT.replace('tags = ["world"]\n', 'tags = ["world"]\nenabled = false\n')),
    ("disable", "Europe Brief",
     LAYOUT.replace("enabled = true  # keep", "enabled = false  # keep")),
    ("disable", "Last", LAYOUT.replace('url = "https://c.example/rss"\n',
                                       'url = "https://c.example/rss"\nenabled = false\n')),
    ("remove", "Wire A", LAYOUT.replace(
        '# Wire A: the fastest wire\n[[sources]]\nname = "Wire A"\n'
        'url = "https://a.example/feed.xml"   # moved in 2025\ntags = ["world"]\n', "")),
    ("remove", "Europe Brief", LAYOUT.replace(
        '# Europe Brief, daily\n[[sources]]\nname = "Europe Brief"\n'
        'url = "https://eb.example/feed.json"\nenabled = true  # keep\n', "")),
    ("remove", "Last", LAYOUT.replace(
        '[[sources]]\nname = "Last"\nurl = "https://c.example/rss"\n', "")),
])
@pytest.mark.parametrize(("bom", "newline"), [("", "\n"), ("", "\r\n"), ("\ufeff", "\r\n")],
                         ids=["lf", "crlf", "bom-crlf"])
def test_sources_are_disabled_and_removed_in_place(tmp_path, command, name, expected, bom,
                                                   newline):
    """The file's own line endings (CRLF from Windows editors) and byte order mark stay."""
    def as_written(text: str) -> bytes:
        return (bom + text.replace("\n", newline)).encode("utf-8")

    config_path = tmp_path / "a.toml"
    config_path.write_bytes(as_written(LAYOUT))
    result = CliRunner().invoke(main, [command, "--config", str(config_path), name])
    assert result.exit_code == 0, result.output
    assert config_path.read_bytes() == as_written(expected)
    expected = config_path.read_text()
    sources = {s.name: s for s in load_config(config_path, environ={}).sources}
    assert (name in sources) == (command == "disable")
    if command == "disable":
        assert not sources[name].enabled
        again = CliRunner().invoke(main, ["disable", "--config", str(config_path), name])
        assert "disabled already" in again.output and config_path.read_text() == expected
        back = CliRunner().invoke(main, ["enable", "--config", str(config_path), name])
        assert back.exit_code == 0 and load_config(config_path, environ={}).source(name).enabled


def test_changing_a_source_refuses_what_it_cannot_do_safely(tmp_path):
    config_path = tmp_path / "a.toml"
    config_path.write_text(LAYOUT)
    unknown = CliRunner().invoke(main, ["remove", "--config", str(config_path), "Nope"])
    assert unknown.exit_code == 1
    assert "no source is named 'Nope' (sources: 'Wire A', 'Europe Brief', 'Last')" in \
        unknown.output
    inline = 'database = "a.db"\nsources = [{ name = "X", url = "https://x.example/f" }]\n'
    config_path.write_text(inline)
    refused = CliRunner().invoke(main, ["disable", "--config", str(config_path), "X"])
    assert refused.exit_code == 1 and "edit it by hand" in refused.output
    assert config_path.read_text() == inline
    # A multi-line string that looks like a table header: the result would read otherwise.
    tricky = ('database = "a.db"\n[[sources]]\nname = "X"\nurl = "https://x.example/f"\n'
              'tags = ["""\n[not a table]"""]\n[[sources]]\nname = "Y"\n'
              'url = "https://y.example/f"\n')
    config_path.write_text(tricky)
    refused = CliRunner().invoke(main, ["disable", "--config", str(config_path), "X"])
    assert refused.exit_code == 1 and "edit it by hand" in refused.output
    assert config_path.read_text() == tricky
    assert not [p for p in tmp_path.iterdir() if p.name != "a.toml"]  # no temporary left


def test_a_configuration_that_cannot_be_written_is_a_clear_error(tmp_path, monkeypatch):
    config_path = tmp_path / "a.toml"
    config_path.write_text(LAYOUT)

    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("aggregator.config.tempfile.NamedTemporaryFile", read_only)
    result = CliRunner().invoke(main, ["disable", "--config", str(config_path), "Last"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {config_path}: disabling source 'Last' needs to "
                                    "write the configuration's folder: Read-only file system")
    assert config_path.read_text() == LAYOUT
