"""Pure clean-up of parsed entries: canonical URL, HTML to text, boilerplate, dates, identity.

Nothing here does I/O.  The output, a ``NormalizedArticle``, is what the rest of the pipeline
fingerprints, clusters and stores.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import lxml.html
from lxml import etree

from .parse import ParsedEntry

# Query parameters that only track the reader; two URLs differing in them name one page.
_TRACKING_PARAMS = re.compile(
    r"^(utm_\w+|fbclid|gclid|dclid|gbraid|wbraid|msclkid|yclid|mc_cid|mc_eid|igshid|_ga|_gl|"
    r"ref|ref_src|ref_url|cmpid|ncid|sr_share|share|smid|spm|ito|__twitter_impression|"
    r"outputtype|amp)$",
    re.IGNORECASE,
)
DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str | None) -> str | None:
    """The URL with tracking parameters, fragment, default port, AMP variant and ``www.`` removed.

    >>> canonical_url("HTTPS://www.Example.com:443/news/story/amp/?utm_source=x&id=3#top")
    'https://example.com/news/story?id=3'
    """
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return url
    host = (parts.hostname or "").lower().rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    if host.startswith("amp."):
        host = host[4:]
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    path = re.sub(r"/{2,}", "/", parts.path or "/")
    path = re.sub(r"/amp(?:\.html)?/?$", "/", path)
    path = re.sub(r"\.amp(\.html?)$", r"\1", path)
    if len(path) > 1:
        path = path.rstrip("/")
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                   if not _TRACKING_PARAMS.match(k))
    # Scheme is folded to https: the same article is often linked both ways.
    return urlunsplit(("https", netloc, path, urlencode(query), ""))


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6",
               "blockquote", "pre", "tr", "table", "section", "article", "header", "footer",
               "figure", "figcaption", "hr", "dd", "dt"}
_DROPPED_TAGS = ("script", "style", "iframe", "noscript", "object", "embed", "form",
                 "button", "svg", "template", "select", "textarea", "input")


def html_to_text(html: str | None) -> str:
    """Readable plain text of an HTML fragment: one paragraph a line, nothing executable kept."""
    if not html:
        return ""
    # Control characters are never text; lxml refuses strings that hold them.
    html = _CONTROL_CHARACTERS.sub(" ", html)
    if "<" not in html and "&" not in html:
        return _tidy_lines(html)
    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except (etree.ParserError, ValueError):
        return _tidy_lines(re.sub(r"<[^>]*>", " ", html))
    for element in root.iter(*_DROPPED_TAGS):
        element.drop_tree()
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.lower() in _BLOCK_TAGS:
            element.tail = "\n" + (element.tail or "")
            if element.tag.lower() != "br":
                element.text = "\n" + (element.text or "")
    return _tidy_lines(root.text_content())


_BLANKS = re.compile(r"[ \t\u00a0\u200b]+")


def _collapse_blanks(line: str) -> str:
    # Most lines have only single spaces: the substitution would rewrite each for nothing.
    if "  " in line or "\t" in line or "\u00a0" in line or "\u200b" in line:
        line = _BLANKS.sub(" ", line)
    return line.strip()


def _tidy_lines(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_collapse_blanks(line) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# Page residue that must never drive a match.  Each pattern is a whole line.  An "end" marker
# found past the first third of the text cuts everything after it (related links, comments).
_END_MARKERS = re.compile(
    r"^(how useful was this (post|article)\??|related (posts|articles|stories|news)|"
    r"(you may|you might) also like|recommended( for you)?|more from [\w ]+|"
    r"read more|read (the )?full (article|story)( at source)?|"
    r"handpicked stories.*|sign up for (our|the) newsletter.*|subscribe to (our|the) newsletter.*|"
    r"disclaimer\s*:.*|comments?( \(\d+\))?|leave a (comment|reply)|share this( article| story)?:?|"
    r"follow us on .*|tags?:.*|trending now)$",
    re.IGNORECASE,
)
_RESIDUE_LINE = re.compile(
    r"^(click (on )?a star to rate it!?|average rating .*|vote count.*|"
    r"no votes so far!?.*|others are reading now|also read( this)?:?|see also:?|"
    r"advertisement|sponsored( content)?|story continues below.*|continue reading.*|"
    r"(first published|last updated|updated|published)\s*:.*|"
    r"\d+ (second|minute|hour|day|week)s? ago|"
    r"\d[\d,]* (views?|viewed|shares?|comments?)\b.*|"
    r"this (article|post|story) was (created|generated|written|rewritten) (based on|with|using).*|"
    r"a newsletter with .*|(image|photo|video|picture)( credit)?s?\s*:.*|"
    r"— .*\(@\w+\) \w+ \d+, \d{4}|pic\.twitter\.com/\S+|"
    r"(share|tweet|email|print|copy link)( on \w+)?)$",
    re.IGNORECASE,
)
# A caption: a line ending in a photo credit, or a line that is only a credit.
_CAPTION = re.compile(
    r"(\((?:[A-Z][\w.&/ -]{0,30}? )?(?:photo|image|picture|file photo)s?\b[^)]{0,80}\)\s*$)|"
    r"(^\s*\(?(image|photo|picture)\s*:\s*[^)]{0,40}\)?\s*$)",
    re.IGNORECASE,
)
# An embedded social-media post: its text is quoted from elsewhere, with a media link.
_EMBEDDED_POST = re.compile(r"\b(pic\.twitter\.com|t\.co|instagram\.com/p)/\w+", re.IGNORECASE)
# The tail of a caption cut from its photo, e.g. " REUTERS)".
_CAPTION_TAIL = re.compile(r"^[^a-z(]{0,40}\)$")
# A dateline alone on its line: "2:59 am - Friday January 30, 2026".
_DATELINE = re.compile(
    r"^(\d{1,2}:\d{2}\s*(am|pm)?\s*[-|,]?\s*)?((mon|tues|wednes|thurs|fri|satur|sun)day,?\s*)?"
    r"((jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4}|"
    r"\d{1,2}\s+(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{4})"
    r"(,?\s*\d{1,2}:\d{2}\s*(am|pm)?\s*[a-z]{0,4})?$",
    re.IGNORECASE,
)


def strip_boilerplate(text: str) -> str:
    """Remove rating widgets, related-link blocks, disclaimers, captions and prompts."""
    lines = text.split("\n")
    total = sum(len(line) for line in lines) or 1
    kept: list[str] = []
    seen = 0
    for line in lines:
        stripped = line.strip()
        seen += len(line)
        if _END_MARKERS.match(stripped):
            if seen > total / 3:
                break
            continue
        # The searches scan the whole line; a caption needs a ")" or a ":", an embedded post
        # a "/", so most lines of prose skip them.
        if (_RESIDUE_LINE.match(stripped)
                or ((")" in stripped or ":" in stripped) and _CAPTION.search(stripped))
                or _CAPTION_TAIL.match(stripped) or _DATELINE.match(stripped)
                or ("/" in stripped and _EMBEDDED_POST.search(stripped))):
            continue
        kept.append(stripped)
    return "\n".join(line for line in kept if line)


# Longer titles and texts are cut: no article needs more, and a hostile feed gets no further.
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 200_000

# A line this long is prose, not a template; only shorter lines are counted per source.
MAX_TEMPLATE_LINE_CHARS = 240


def line_key(line: str) -> str:
    return hashlib.sha1(folded_words(line)).hexdigest()[:16]


def template_line_keys(text: str) -> set[str]:
    """Keys of the lines of ``text`` that could be a source's template (short enough)."""
    return {line_key(line) for line in text.split("\n")
            if line.strip() and len(line) <= MAX_TEMPLATE_LINE_CHARS}


def strip_lines(text: str, keys: set[str]) -> str:
    """``text`` without the lines whose key is in ``keys``."""
    if not keys:
        return text
    return "\n".join(line for line in text.split("\n")
                     if len(line) > MAX_TEMPLATE_LINE_CHARS or line_key(line) not in keys)


def _utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC, to the whole second.

    Whole seconds because the store keeps times so: a time that the clusterer used to the
    microsecond (a JSON feed's, say) would come back different after a restart, and so would
    the time factors of the decisions that follow.
    """
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


# How far ahead of its fetch an entry's own date may be (time zones, clocks a little off).
PUBLISHED_AHEAD_ALLOWED = timedelta(days=1)


def effective_published(published: datetime | None, fetched: datetime) -> datetime:
    """The time a story is dated by: the entry's date, unless missing or more than a day ahead."""
    published = _utc(published)
    if published is None or published > fetched + PUBLISHED_AHEAD_ALLOWED:
        return fetched
    return published


# Typographic punctuation that keeps most English news text from being pure ASCII: the
# right single quote (an apostrophe to ``fingerprint._WORD``) becomes "'", the rest a space.
# Every one of them is a non-word character (``\W``), so folding them changes no hash and no
# word count, and the folded text can take the byte-table paths below.
_TYPOGRAPHY = (("\u2019", "'"), ("\u2018", " "), ("\u201c", " "), ("\u201d", " "),
               ("\u2014", " "), ("\u2013", " "), ("\u2026", " "), ("\xa0", " "))


def ascii_folded(text: str) -> bytes | None:
    """``text`` as ASCII bytes with its typographic punctuation folded, or None when other
    non-ASCII characters remain (those take the regular-expression paths)."""
    if not text.isascii():
        for typographic, plain in _TYPOGRAPHY:
            if typographic in text:
                text = text.replace(typographic, plain)
        if not text.isascii():
            return None
    return text.encode("ascii")


# ASCII word characters (``\w``: letters, digits, underscore) kept, everything else a space.
_HASHED_BYTES = bytes(c if c < 128 and (chr(c).isalnum() or c == ord("_")) else ord(" ")
                      for c in range(256))


def folded_words(text: str) -> bytes:
    """The lower-cased words of ``text``, one space apart, as UTF-8: what content hashes and
    template-line keys are computed from."""
    data = ascii_folded(text)
    if data is None:
        return re.sub(r"\W+", " ", text.casefold()).strip().encode("utf-8")
    # The same bytes as the regular expression gives, about four times faster: every entry
    # of every feed is hashed, and every short line of it keyed.
    return b" ".join(data.lower().translate(_HASHED_BYTES).split())


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(folded_words(f"{title}\n{text}")).hexdigest()


# A GUID shared by two feeds names one entry only when it is globally unique by construction.
_GLOBAL_GUID = re.compile(r"^(https?://|urn:|tag:|[0-9a-f-]{32,}$)", re.IGNORECASE)


def identity_keys(source: str, guid: str | None, canonical: str | None,
                  digest: str) -> tuple[str, ...]:
    """Keys under which an entry is the same entry seen before, strongest first."""
    keys: list[str] = []
    if guid:
        keys.append(f"guid:{guid}" if _GLOBAL_GUID.match(guid) else f"guid:{source}:{guid}")
    if canonical:
        keys.append(f"url:{canonical}")
    # Equal text from another source is a copy to link, not the same entry: scope by source.
    keys.append(f"hash:{source}:{digest}")
    return tuple(keys)


@dataclass(frozen=True)
class NormalizedArticle:
    source: str
    guid: str | None
    url: str | None
    canonical_url: str | None
    title: str
    author: str | None
    published: datetime
    has_published: bool
    fetched: datetime
    text: str
    content_hash: str
    identity_keys: tuple[str, ...]

    @property
    def identity_key(self) -> str:
        return self.identity_keys[0]


def normalize_entry(entry: ParsedEntry, source: str, fetched: datetime) -> NormalizedArticle:
    fetched = _utc(fetched) or datetime.now(UTC)
    title = _tidy_lines(html_to_text(entry.title)).replace("\n", " ")[:MAX_TITLE_CHARS]
    body = html_to_text(entry.content or entry.summary)[:MAX_TEXT_CHARS]
    text = strip_boilerplate(body)
    canonical = canonical_url(entry.link)
    digest = content_hash(title, text)
    return NormalizedArticle(
        source=source,
        guid=(entry.guid or "").strip() or None,
        url=entry.link,
        canonical_url=canonical,
        title=title,
        # One line without control characters, as the title: it goes into JSON and pages.
        author=" ".join(_CONTROL_CHARACTERS.sub(" ", entry.author or "").split())[
            :MAX_TITLE_CHARS] or None,
        published=effective_published(entry.published, fetched),
        has_published=entry.published is not None,
        fetched=fetched,
        text=text,
        content_hash=digest,
        identity_keys=identity_keys(source, (entry.guid or "").strip() or None, canonical, digest),
    )
