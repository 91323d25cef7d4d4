"""Check the built site (site/) the way a reader meets it: links, images, a real browser.

    python -m tools.check_site                 # after `mkdocs build --strict`

1. Crawl every HTML page under site/ and resolve every internal href/src against the files in
   site/ (and every #fragment against the ids of the target page). Any miss is a failure.
2. Serve site/ on a free localhost port, open pages in headless Chromium (Debian's
   /usr/bin/chromium driven by playwright, no browser download), and fail on any image that
   does not load (naturalWidth == 0) and on JavaScript errors.
3. Save screenshots of the home page and the results pages to docs-screenshots/.

If /usr/bin/chromium is missing and we are root, it is installed with apt-get (Debian package
`chromium`); otherwise the script says what to install and fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import posixpath
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "site"
SCREENSHOTS = REPO / "docs-screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Pages opened in the browser: (site path, screenshot name); every results page is added.
BROWSER_PAGES = [
    ("index.html", "home"),
    ("usage/index.html", "usage"),
    ("architecture/index.html", "architecture"),
    ("guidelines/index.html", "guidelines"),
    ("notebooks/walkthrough/index.html", "walkthrough"),
    ("updates/index.html", "updates"),
    ("reference/models.granite_speech/index.html", "reference-granite_speech"),
    ("serving/index.html", "serving"),
    ("granite-speech-5/index.html", "granite-speech-5"),
]


# ----- static link check --------------------------------------------------------------------


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    refs: list[tuple[str, str]] = field(default_factory=list)  # (attribute, value)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.page.ids.add(attrs[key])
        for key in ("href", "src"):
            value = attrs.get(key)
            if value is not None and not (tag == "link" and attrs.get("rel") == "preconnect"):
                self.page.refs.append((f"<{tag} {key}>", value))
        if attrs.get("srcset"):
            for part in attrs["srcset"].split(","):
                if part.strip():
                    self.page.refs.append((f"<{tag} srcset>", part.strip().split()[0]))


def parse_page(path: Path) -> Page:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return collector.page


def _target_file(site: Path, page_rel: str, url_path: str) -> Path:
    """The file a relative or root-relative URL path points to (directory -> index.html)."""
    if url_path.startswith("/"):
        rel = url_path.lstrip("/")
    else:
        rel = posixpath.normpath(posixpath.join(posixpath.dirname(page_rel), url_path))
    target = site / unquote(rel)
    if url_path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target


def check_links(site: Path) -> tuple[int, int, list[str]]:
    """(pages, internal references checked, problems)."""
    pages = {p.relative_to(site).as_posix(): parse_page(p) for p in sorted(site.rglob("*.html"))}
    problems, checked = [], 0
    for page_rel, page in pages.items():
        for where, value in page.refs:
            parts = urlsplit(value)
            if parts.scheme or parts.netloc or value.startswith(("mailto:", "javascript:")):
                continue  # external: not checked (the site must not need the network)
            if value.startswith("data:"):
                continue
            checked += 1
            if parts.path:
                target = _target_file(site, page_rel, parts.path)
                if not target.is_file():
                    problems.append(f"{page_rel}: {where} {value!r} -> missing {target}")
                    continue
            else:
                target = site / page_rel
            if parts.fragment and target.suffix == ".html":
                target_rel = target.relative_to(site).as_posix()
                ids = pages[target_rel].ids if target_rel in pages else parse_page(target).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{page_rel}: {where} {value!r} -> no id in {target_rel}")
    return len(pages), checked, problems


# ----- browser ------------------------------------------------------------------------------


def ensure_chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        print(f"check_site: {CHROMIUM} not found; installing Debian's chromium with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
        if CHROMIUM.exists():
            return CHROMIUM
    raise SystemExit(
        f"check_site: {CHROMIUM} not found. Install Debian's Chromium "
        "(`sudo apt-get update && sudo apt-get install -y chromium`) and run again."
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    with socket.socket() as probe:  # a free port on the loopback interface
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/"


BROKEN_IMAGES_JS = """
async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); })));
  return imgs.filter(img => img.naturalWidth === 0).map(img => img.currentSrc || img.src);
}
"""


def check_in_browser(
    base_url: str, pages: list[tuple[str, str]], shots: Path, full_page: bool = False
) -> list[str]:
    from playwright.sync_api import sync_playwright

    problems = []
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(ensure_chromium()), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # Nothing outside the local server is fetched (the site must work offline).
            context.route(
                "**/*",
                lambda route: (
                    route.continue_() if route.request.url.startswith(base_url) else route.abort()
                ),
            )
            for rel, name in pages:
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.on(
                    "console",
                    lambda msg, errors=errors: (
                        errors.append(msg.text) if msg.type == "error" else None
                    ),
                )
                url = base_url + rel
                response = page.goto(url, wait_until="load")
                if response is None or response.status != 200:
                    status = response.status if response else "no response"
                    problems.append(f"{rel}: HTTP {status}")
                    page.close()
                    continue
                page.wait_for_timeout(300)  # let the theme's scripts settle
                for src in page.evaluate(BROKEN_IMAGES_JS):
                    problems.append(f"{rel}: image did not load: {src}")
                for error in errors:
                    problems.append(f"{rel}: JavaScript error: {error}")
                out = shots / f"{name}.png"
                page.screenshot(path=str(out), full_page=full_page)
                print(f"check_site: {rel}: ok, screenshot {_shown(out)}")
                page.close()
            # The home page once more in the dark palette (the theme's toggle follows it).
            dark = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
            page = dark.new_page()
            page.goto(base_url + "index.html", wait_until="load")
            page.wait_for_timeout(300)
            scheme = page.evaluate("document.body.getAttribute('data-md-color-scheme')")
            if scheme != "slate":
                problems.append(f"index.html: dark palette not applied (scheme {scheme!r})")
            out = shots / "home-dark.png"
            page.screenshot(path=str(out))
            print(f"check_site: index.html (dark): ok, screenshot {_shown(out)}")
            dark.close()
        finally:
            browser.close()
    return problems


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ----- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, default=SITE, help="the built site (default site/)")
    parser.add_argument("--screenshots", type=Path, default=SCREENSHOTS)
    parser.add_argument("--no-browser", action="store_true", help="only the static link check")
    parser.add_argument("--full-page", action="store_true", help="screenshots of whole pages")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        raise SystemExit(f"check_site: {site}/index.html not found: run `mkdocs build` first")

    start = time.monotonic()
    n_pages, n_refs, problems = check_links(site)
    print(f"check_site: {n_pages} pages, {n_refs} internal links and sources checked")

    if not args.no_browser:
        pages = [(rel, name) for rel, name in BROWSER_PAGES if (site / rel).is_file()]
        missing = [rel for rel, _ in BROWSER_PAGES if not (site / rel).is_file()]
        problems += [f"{rel}: expected page not built" for rel in missing]
        results = sorted(
            p.relative_to(site).as_posix() for p in (site / "results").rglob("index.html")
        )
        if not results:
            problems.append("results/: no result page built")
        pages += [(rel, rel.removesuffix("/index.html").replace("/", "-")) for rel in results]
        server, base_url = serve(site)
        try:
            problems += check_in_browser(
                base_url, pages, args.screenshots.resolve(), args.full_page
            )
        finally:
            server.shutdown()
        print(f"check_site: {len(pages)} pages opened in Chromium")

    elapsed = time.monotonic() - start
    if problems:
        print(f"check_site: FAILED with {len(problems)} problem(s) in {elapsed:.0f} s:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    where = "" if args.no_browser else f"; screenshots in {args.screenshots}"
    print(f"check_site: OK in {elapsed:.0f} s{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
