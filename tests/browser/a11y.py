"""Checks run inside a page in Chromium: axe-core (WCAG 2.2 A/AA) and horizontal overflow.

axe-core comes from the npm registry into .test-tools/ (scripts/test installs it); it is injected into
the page under test only and never served by the portal.
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
TOOLS = ROOT / ".test-tools"
AXE = TOOLS / "node_modules" / "axe-core" / "axe.min.js"
AXE_PACKAGE = "axe-core@4.14"
# Tags axe gives the WCAG 2.0/2.1/2.2 level A and AA rules.
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
BLOCKING = ("serious", "critical")


def axe_source() -> str:
    if not AXE.is_file():
        # Same command as scripts/test: a developer who runs pytest directly gets it too.
        try:
            subprocess.run(["npm", "install", "--prefix", str(TOOLS), "--no-audit", "--no-fund", "--silent",
                            AXE_PACKAGE], check=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            pytest.fail(f"axe-core is missing and `npm install --prefix .test-tools {AXE_PACKAGE}` failed: {error}")
    return AXE.read_text()


def axe_violations(page) -> list[str]:
    """Serious and critical WCAG A/AA violations on the page as shown now: ["rule: target (summary)", ...]."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        # Evaluated through the DevTools protocol, not as a <script>: the portal's Content-Security-Policy
        # rightly refuses inline scripts, and the check must not need it loosened.
        page.evaluate(axe_source() + "\n;true")
    result = page.evaluate(
        "async (tags) => (await axe.run(document, {runOnly: {type: 'tag', values: tags}})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => [n.target.join(' '), n.failureSummary])}))",
        WCAG_AA,
    )
    return [f"{v['id']} ({v['impact']}): {target} — {summary}"
            for v in result if v["impact"] in BLOCKING for target, summary in v["nodes"]]


def horizontal_overflow(page) -> str:
    """"" when the page fits its viewport's width; else the widths and the elements that stick out."""
    return page.evaluate("""() => {
        const doc = document.scrollingElement, width = window.innerWidth;
        if (doc.scrollWidth <= width) return "";
        const wide = [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > width + 1)
            .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                             (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ').join('.') : '') +
                             ' right=' + Math.round(e.getBoundingClientRect().right));
        return `scrollWidth ${doc.scrollWidth} > ${width}: ${wide.join(', ')}`;
    }""")


def structure_problems(page, *, phone: bool) -> list[str]:
    """What axe leaves to people, checked on the page as shown now.

    The page has a language and a skip link to <main>; its first heading is the h1; every
    aria-describedby names elements that exist; on a phone every control (buttons, fields, navigation
    and banner links, summaries) is at least 44 px high (WCAG 2.5.5), links in running text excepted.
    """
    return page.evaluate("""(phone) => {
        const problems = [];
        if (!document.documentElement.lang) problems.push('html has no lang');
        const skip = document.querySelector('a.skip-link');
        if (!skip || !document.querySelector(skip.getAttribute('href'))) problems.push('no skip link to the content');
        const first = document.querySelector('h1, h2, h3, h4, h5, h6');
        if (!first || first.tagName !== 'H1') problems.push('first heading is ' + (first ? first.tagName : 'missing'));
        for (const el of document.querySelectorAll('[aria-describedby]')) {
            for (const id of el.getAttribute('aria-describedby').split(/\\s+/)) {
                if (!document.getElementById(id)) problems.push(`#${el.id || el.name} described by missing #${id}`);
            }
        }
        if (phone) {
            const controls = 'button, .button, input:not([type=hidden]):not([type=checkbox]):not([type=radio]), select, ' +
                             'textarea, summary, nav a, .banner-links a, .topbar a';
            for (const el of document.querySelectorAll(controls)) {
                const box = el.getBoundingClientRect();
                if (box.width === 0 && box.height === 0) continue;  // not shown
                if (box.height < 44) problems.push(`${el.tagName.toLowerCase()} "${(el.textContent || el.name || '').trim().slice(0, 30)}" is ${Math.round(box.height)} px high`);
            }
        }
        return problems;
    }""", phone)
