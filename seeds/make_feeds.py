"""Write the three seed feeds (RSS 2.0, Atom 1.0, JSON Feed 1.1) from the seed documents.

Each outlet publishes its document as one entry: title, link, GUID, author and date are those
the document gives (where it names no author, the outlet's desk).  The entry body is the
document text unchanged, one paragraph per non-empty line, page residue included.

    python seeds/make_feeds.py
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

HERE = Path(__file__).resolve().parent

SEEDS = [
    {
        "file": "000_62c6014feff961ea.txt", "format": "rss",
        "feed": "world-desk.rss.xml", "outlet": "World Desk Daily",
        "site": "https://world-desk.example",
        "title": "Russias top diplomat rejects key part of deal to end war with Ukraine",
        "link": "https://world-desk.example/world/russias-top-diplomat-rejects-key-part-of-deal",
        "guid": "https://world-desk.example/?p=62c6014feff961ea",
        "author": "Siddharth Panda",
        "date": "2026-01-30T02:59:00+00:00", "rfc822": "Fri, 30 Jan 2026 02:59:00 +0000",
    },
    {
        "file": "002_1269fce722567045.txt", "format": "atom",
        "feed": "news18-world.atom.xml", "outlet": "News18 World",
        "site": "https://news18.example",
        "title": "Russia's Top Diplomat Rejects Security Guarantees For Ukraine: "
                 "'Meant To Preserve Zelenskyy Regime'",
        "link": "https://news18.example/world/russias-top-diplomat-rejects-security-guarantees",
        "guid": "tag:news18.example,2026-01-30:1269fce722567045",
        "author": "News18 Desk",
        "date": "2026-01-30T03:51:00+00:00",
    },
    {
        "file": "003_1673f164bb2f6a0c.txt", "format": "json",
        "feed": "europe-brief.feed.json", "outlet": "Europe Brief",
        "site": "https://europe-brief.example",
        "title": "Lavrov says, Russia will only accept international security guarantees in "
                 "Ukraine on one condition",
        "link": "https://europe-brief.example/news/lavrov-security-guarantees-one-condition",
        "guid": "europe-brief-1673f164bb2f6a0c",
        "author": "Europe Brief Staff",
        "date": "2026-01-30T08:00:00+00:00",
    },
]


def body_html(text: str) -> str:
    return "\n".join(f"<p>{escape(line.strip())}</p>" for line in text.splitlines()
                     if line.strip())


def rss(seed: dict, html: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
     xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel>
    <title>{xml_escape(seed['outlet'])}</title>
    <link>{seed['site']}/</link>
    <description>World news from {xml_escape(seed['outlet'])}</description>
    <ttl>30</ttl>
    <item>
      <title>{xml_escape(seed['title'])}</title>
      <link>{seed['link']}</link>
      <guid isPermaLink="false">{seed['guid']}</guid>
      <dc:creator>{xml_escape(seed['author'])}</dc:creator>
      <pubDate>{seed['rfc822']}</pubDate>
      <content:encoded><![CDATA[{html}]]></content:encoded>
    </item>
  </channel>
</rss>
"""


def atom(seed: dict, html: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>{xml_escape(seed['outlet'])}</title>
  <link href="{seed['site']}/"/>
  <id>{seed['site']}/</id>
  <updated>{seed['date']}</updated>
  <entry>
    <title>{xml_escape(seed['title'])}</title>
    <link rel="alternate" href="{seed['link']}"/>
    <id>{seed['guid']}</id>
    <author><name>{xml_escape(seed['author'])}</name></author>
    <published>{seed['date']}</published>
    <updated>{seed['date']}</updated>
    <content type="html">{xml_escape(html)}</content>
  </entry>
</feed>
"""


def json_feed(seed: dict, html: str) -> str:
    document = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": seed["outlet"],
        "home_page_url": seed["site"] + "/",
        "items": [{
            "id": seed["guid"],
            "url": seed["link"],
            "title": seed["title"],
            "content_html": html,
            "date_published": seed["date"],
            "authors": [{"name": seed["author"]}],
        }],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    writers = {"rss": rss, "atom": atom, "json": json_feed}
    for seed in SEEDS:
        text = (HERE / seed["file"]).read_text(encoding="utf-8")
        output = writers[seed["format"]](seed, body_html(text))
        (HERE / seed["feed"]).write_text(output, encoding="utf-8")
        print(f"wrote {seed['feed']}")


if __name__ == "__main__":
    main()
