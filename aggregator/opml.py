"""Sources in and out as OPML 2.0, the subscription-list format every feed reader speaks.

Import appends the new sources to the configuration file (comments and order kept);
folders and ``category`` attributes become tags.  Export writes every configured source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from lxml import etree

from .config import Config, append_sources, load_config, source_table, unique_source_name
from .errors import AggregatorError


@dataclass(frozen=True)
class Subscription:
    name: str
    url: str
    tags: tuple[str, ...]


def read_opml(path: str | os.PathLike[str]) -> list[Subscription]:
    """Every outline with an ``xmlUrl``; a bad file is an error naming it."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.parse(str(path), parser).getroot()
    except (OSError, etree.XMLSyntaxError) as exc:
        raise AggregatorError(f"{path}: not a readable OPML file: {exc}") from None
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise AggregatorError(f"{path}: not an OPML document (no <opml><body>)")
    found: list[Subscription] = []

    def walk(element, folders: tuple[str, ...]) -> None:
        for outline in element.findall("outline"):
            label = (outline.get("title") or outline.get("text") or "").strip()
            url = (outline.get("xmlUrl") or "").strip()
            categories = tuple(part.strip("/ ") for part in
                               (outline.get("category") or "").replace("/", ",").split(",")
                               if part.strip("/ "))
            if url:
                tags = tuple(dict.fromkeys(t.lower() for t in folders + categories if t))
                found.append(Subscription(label or url, url, tags))
            else:
                walk(outline, folders + ((label,) if label else ()))

    walk(body, ())
    return found


def import_opml(config_path: str, opml_path: str) -> tuple[list[str], list[str]]:
    """Append the OPML's new sources to the configuration; returns (added, skipped).

    A source is skipped when its URL is configured already.  The file is replaced only when
    the result validates, so a failed import leaves it as it was.
    """
    config = load_config(config_path, secrets=False)
    known_urls = {s.url for s in config.sources}
    names = {s.name for s in config.sources}
    added, skipped, tables = [], [], []
    for subscription in read_opml(opml_path):
        if subscription.url in known_urls:
            skipped.append(subscription.name)
            continue
        name = unique_source_name(subscription.name, names)
        names.add(name)
        known_urls.add(subscription.url)
        tables.append(source_table(name, subscription.url, tags=list(subscription.tags)))
        added.append(name)
    if tables:
        append_sources(config_path, tables, f"importing {opml_path}")
    return added, skipped


def export_opml(config: Config) -> bytes:
    root = etree.Element("opml", version="2.0")
    head = etree.SubElement(root, "head")
    etree.SubElement(head, "title").text = "news-dedup-aggregator sources"
    etree.SubElement(head, "dateCreated").text = format_datetime(datetime.now(UTC),
                                                                 usegmt=True)
    body = etree.SubElement(root, "body")
    for source in config.sources:
        attributes = {"type": "rss", "text": source.name, "title": source.name,
                      "xmlUrl": source.url}
        if source.tags:
            attributes["category"] = ",".join(f"/{tag}" for tag in source.tags)
        etree.SubElement(body, "outline", attributes)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)
