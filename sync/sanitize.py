"""HTML mail bodies made safe to show inside the portal's pages (nh3, the Rust ammonia sanitizer).

Mail HTML is hostile input: it may carry scripts, event handlers, forms that
imitate the CRM's login, ``javascript:`` links, CSS that covers the page, and
remote images whose loading tells the sender that (and when, and from where)
the mail was read. An allow-list keeps the structure that makes a mail
readable (text, links, lists, tables, images) and drops everything else:

- no script, style, iframe, object, embed, svg, math, form or input elements
  (the first ones with their content), no event handlers, no ``style``,
  ``class`` or ``id`` attributes (they could restyle or clobber the page);
- links only to http, https and mailto, never relative (they would point into
  the CRM), always ``target="_blank"`` with ``rel="noopener noreferrer"``;
- images only from http or https (``cid:`` and ``data:`` parts are not kept,
  their alt text stays), and even those are BLOCKED in what sanitize()
  returns: the URL moves into ``data-remote-src``, which browsers never load.
  with_remote_images() turns them back into ``src`` for one view when the
  user asks ("Bilder anzeigen").

How the blocking works: html5ever (nh3's serializer) escapes ``<`` in text and
``"`` in attribute values and writes every attribute as ``name="value"``, so
after a first sanitizing pass an ``<img`` followed by quoted attributes is a
real image tag and its ``src`` can be renamed by a regular expression (text
that merely shows ``src="..."``, say HTML code in a newsletter, is not
touched). A second pass with an allow-list that has no ``src`` at all
validates the result, so no image can load from what is stored even if that
reasoning were wrong. Showing images runs the stored HTML through the first
allow-list again.
"""

import re

import nh3

TAGS = {
    "a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup",
    "dd", "del", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span",
    "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "time", "tr", "tt", "u",
    "ul", "var", "wbr",
}
# Removed together with their content (text inside them is code or fallback, not the mail).
CONTENT_REMOVED = {"script", "style", "title", "template", "iframe", "object", "embed", "svg", "math", "noscript",
                   "textarea", "select"}
_CELL = {"align", "valign", "width", "height", "colspan", "rowspan"}
_COMMON_IMAGE = {"alt", "title", "width", "height"}
_ATTRIBUTES = {
    "*": {"title", "lang", "dir"},
    "a": {"href"},
    "td": _CELL, "th": _CELL | {"scope"},
    "table": {"align", "width", "border", "cellpadding", "cellspacing", "summary"},
    "col": {"span", "width", "align"}, "colgroup": {"span", "width"},
    "tr": {"align", "valign"}, "p": {"align"}, "div": {"align"}, "ol": {"start", "type"}, "li": {"value"},
    "time": {"datetime"}, "blockquote": {"cite"}, "q": {"cite"},
}
REMOTE = ("http://", "https://")
BLOCKED_ATTRIBUTE = "data-remote-src"


def _filter(tag: str, attribute: str, value: str) -> str | None:
    # Images load only from the web (blocked until the user allows it); a cite
    # attribute is never followed by browsers but must not smuggle a scheme either.
    if (tag, attribute) in (("img", "src"), ("img", BLOCKED_ATTRIBUTE), ("blockquote", "cite"), ("q", "cite")):
        return value if value.strip().lower().startswith(REMOTE) else None
    return value


def _cleaner(image_attribute: str) -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=TAGS, clean_content_tags=CONTENT_REMOVED,
        attributes={**_ATTRIBUTES, "img": _COMMON_IMAGE | {image_attribute}},
        attribute_filter=_filter, strip_comments=True, link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}}, url_schemes={"http", "https", "mailto"},
        url_relative="deny",
    )


def _in_img_tag(attribute: str) -> re.Pattern:
    # "<img", then whole name="value" pairs (values hold no '"'), then the attribute.
    return re.compile(rf'(<img(?:\s+[^\s="<>]+="[^"]*")*?\s+){attribute}="')


_IMG_SRC = _in_img_tag("src")
_IMG_BLOCKED = _in_img_tag(BLOCKED_ATTRIBUTE)
_WITH_IMAGES = _cleaner("src")
_IMAGES_BLOCKED = _cleaner(BLOCKED_ATTRIBUTE)


def sanitize(html: str) -> str:
    """Untrusted mail HTML -> safe HTML with remote images blocked (what MessageBody.html stores)."""
    if not html:
        return ""
    safe = _WITH_IMAGES.clean(html)
    return _IMAGES_BLOCKED.clean(_IMG_SRC.sub(rf'\1{BLOCKED_ATTRIBUTE}="', safe))


def with_remote_images(stored: str) -> str:
    """sanitize()'s output with its remote images allowed to load (one view, on the user's request)."""
    return _WITH_IMAGES.clean(_IMG_BLOCKED.sub(r'\1src="', stored))


def has_blocked_images(stored: str) -> bool:
    return _IMG_BLOCKED.search(stored) is not None
