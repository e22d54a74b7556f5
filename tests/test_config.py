from __future__ import annotations

import pytest
from click.testing import CliRunner

from aggregator.cli import main
from aggregator.config import AppAccount, load_config, parse_duration
from aggregator.errors import ConfigError

GOOD_SOURCE = '[[sources]]\nname = "A"\nurl = "https://a.example/feed"\n'

# (file text, words the one-line message must contain)
BROKEN = [
    pytest.param('database = "x.db"\ncolour = "blue"\n', ["colour", "unknown key"],
                 id="unknown-top-key"),
    pytest.param(GOOD_SOURCE + 'intervall = "5m"\n', ["source 'A'", "intervall", "unknown key"],
                 id="unknown-source-key"),
    pytest.param(GOOD_SOURCE + "priority = \"high\"\n", ["source 'A'", "priority", "integer"],
                 id="wrong-type"),
    pytest.param(GOOD_SOURCE + "enabled = 1\n", ["source 'A'", "enabled", "true or false"],
                 id="wrong-type-bool"),
    pytest.param(GOOD_SOURCE + 'interval = "soon"\n', ["source 'A'", "interval", "duration"],
                 id="bad-duration"),
    pytest.param(GOOD_SOURCE + GOOD_SOURCE, ["source 'A'", "name", "duplicate"],
                 id="duplicate-name"),
    pytest.param('[[sources]]\nname = "B"\nurl = "ftp://b.example/feed"\n',
                 ["source 'B'", "url", "ftp://"], id="bad-scheme"),
    pytest.param('[[sources]]\nname = "C"\nurl = "https:///feed"\n',
                 ["source 'C'", "url", "no host"], id="url-without-host"),
    pytest.param('[[sources]]\nname = "D"\nurl = "http://[::1/feed"\n',
                 ["source 'D'", "url", "is not a URL", "Invalid IPv6 URL"], id="unclosed-ipv6"),
    pytest.param('[[sources]]\nname = "E"\nurl = "http://e.example:99999/feed"\n',
                 ["source 'E'", "url", "is not a URL", "out of range"], id="port-out-of-range"),
    # TOML allows inf and nan; a duration beyond a century overflows the schedule's times.
    pytest.param(GOOD_SOURCE + "interval = inf\n", ["source 'A'", "interval", "100 years"],
                 id="interval-inf"),
    pytest.param(GOOD_SOURCE + "interval = nan\n", ["source 'A'", "interval", "100 years"],
                 id="interval-nan"),
    pytest.param('retention = "999999999999d"\n', ["retention", "100 years"],
                 id="retention-beyond-a-century"),
    pytest.param("[clustering]\nsame_story_threshold = nan\n",
                 ["clustering.same_story_threshold", "finite"], id="threshold-nan"),
    pytest.param(GOOD_SOURCE + "priority = 99999999999999999999999\n",
                 ["source 'A'", "priority", "between"], id="priority-beyond-sqlite"),
    # Names and tags go into OPML and XML feeds, which cannot hold control characters.
    pytest.param('[[sources]]\nname = "A\\u0001B"\nurl = "https://a.example/"\n',
                 ["name", "control character"], id="name-with-a-control-character"),
    pytest.param(GOOD_SOURCE + 'tags = ["t\\u0002"]\n', ["source 'A'", "tags",
                                                       "control character"],
                 id="tag-with-a-control-character"),
    pytest.param(GOOD_SOURCE + 'tags = ["t\\uffff"]\n', ["tags", "control character"],
                 id="tag-with-a-non-character"),
    pytest.param('[[webhooks]]\nname = "w\\u0007"\nurl = "https://hooks.example/x"\n',
                 ["webhooks[0].name", "control character"], id="webhook-name-control"),
    # httpx sends header text as ASCII only, and one line.
    pytest.param('user_agent = "Agr\\u00e9gateur/1.0"\n', ["user_agent", "ASCII"],
                 id="user-agent-beyond-ascii"),
    pytest.param('user_agent = "Agg\\nX-Evil: 1"\n', ["user_agent", "one line"],
                 id="user-agent-on-two-lines"),
    pytest.param('[http]\nbase_url = "https://[::1/news"\n',
                 ["http.base_url", "is not a URL"], id="base-url-not-a-url"),
    pytest.param('[[webhooks]]\nname = "w"\nurl = "https://hooks.example:70000/x"\n',
                 ["webhooks[0].url", "is not a URL"], id="webhook-url-not-a-url"),
    pytest.param('[[sources]]\nurl = "https://a.example/"\n', ["source '#1'", "name", "required"],
                 id="missing-name"),
    pytest.param("[clustering]\nsame_story_threshold = 3\n",
                 ["clustering.same_story_threshold", "between"], id="out-of-range"),
    pytest.param("[clustering]\ncanonical_policy = [\"loudest\"]\n",
                 ["clustering.canonical_policy", "loudest"], id="unknown-criterion"),
    pytest.param("[clustering]\nwindow_articles = 10\n",
                 ["clustering.window_articles", "0 (no limit)", "got 10"],
                 id="window-limit-too-small"),
    pytest.param("[clustering]\nwindow_articles = 5e4\n",
                 ["clustering.window_articles", "an integer"], id="window-limit-not-integer"),
    pytest.param("database = \n", ["invalid TOML"], id="invalid-toml"),
]


@pytest.mark.parametrize(("text", "words"), BROKEN)
def test_config_errors_name_file_source_and_key_and_exit_2(tmp_path, text, words):
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    for word in words:
        assert word in message
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "aggregator.db").exists()


def test_missing_config_file_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["run", "--once", "--config", str(tmp_path / "no.toml")])
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.toml").write_text('database = "../data/a.db"\n[[sources]]\nname = "L"\n'
                                   'url = "feeds/l.xml"\n', encoding="utf-8")
    config = load_config(folder / "a.toml", environ={})
    assert config.database == str(tmp_path / "data" / "a.db")
    assert config.sources[0].url == str(folder / "feeds" / "l.xml")
    assert config.sources[0].is_local


def test_environment_overrides_config_and_database(tmp_path):
    path = tmp_path / "env.toml"
    path.write_text(GOOD_SOURCE, encoding="utf-8")
    config = load_config(None, environ={"AGGREGATOR_CONFIG": str(path),
                                        "AGGREGATOR_DB": "/data/override.db"})
    assert config.path == str(path)
    assert config.database == "/data/override.db"
    assert config.sources[0].interval_s == 1800


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("45s", 45.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1w", 604800.0), ("30", 30.0),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-5m", True, [], "5 minutes"])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_default_config_is_valid():
    from conftest import ROOT

    config = load_config(ROOT / "config" / "aggregator.toml", environ={})
    assert len(config.sources) == 3
    assert all(source.is_local for source in config.sources)


def test_a_file_saved_with_a_byte_order_mark_and_crlf_loads(tmp_path):
    """As Windows editors save it."""
    path = tmp_path / "w.toml"
    path.write_bytes('\ufeffdatabase = "w.db"\r\n[[sources]]\r\nname = "A"\r\n'
                     'url = "https://a.example/feed"\r\n'.encode())
    assert [s.name for s in load_config(path, environ={}).sources] == ["A"]


def test_the_readme_configuration_example_is_valid(tmp_path):
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", readme, re.DOTALL).group(1)
    path = tmp_path / "example.toml"
    path.write_text(example, encoding="utf-8")
    # The example's private feed and its Fever account read their passwords from the
    # environment.
    config = load_config(path, environ={"FEED_PASSWORD": "s3cret", "APPS_PASSWORD": "f"})
    assert config.sources[0].name == "Example"
    assert config.sources[0].credentials.password == "s3cret"
    assert config.http.apps == AppAccount("ann", "f", 30 * 86400.0)
    assert config.service_groups == (("tumblr", ("*.tumblr.com", "tumblr.com")),)
