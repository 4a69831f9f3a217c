"""The built documentation site, opened in headless Chromium.

``make docs`` builds ``docs/_build/html``; these tests load its pages in Debian's ``chromium``
driven through the Chrome DevTools Protocol over a pipe (``--remote-debugging-pipe``: no
websocket library, no Playwright), and check what a reader would see:

* no console error and no uncaught exception on the landing page, each notebook page, the
  results pages and the API page of ``ICLK`` (requests to other hosts, such as MathJax's CDN, are
  blocked: the check is about the site's own files, offline as in CI);
* every ``<img>`` loaded (``naturalWidth > 0``), so every notebook page shows its figures;
* every internal link resolves: its file exists and its ``#fragment`` is an id on that page;
* a screenshot of the landing page, saved as ``docs/_build/screenshots/index.png``.

Skipped when the site is not built or no Chromium is installed, so ``make test`` passes without
them; ``.ci/run`` installs Chromium and builds the site first. The static checks at the end
(every figure on some page, every public name in the API index) need only the files.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SITE = DOCS / "_build" / "html"
PAGE_TIMEOUT_S = 30
PAGES = [
    "index.html",
    "01_lucas_kanade.html",
    "02_supervised_descent.html",
    "03_spatial_transformers.html",
    "04_equivalence.html",
    "paper.html",
    "results.html",
    "benchmarks.html",
    "conventions.html",
    "api/classical.html",
]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
]
# What each page reports back: broken images and every link with its resolved URL.
PAGE_SCRIPT = """(() => ({
  images: [...document.images].map(
    i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
}))()"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """Chromium with the DevTools Protocol on file descriptors 3 (commands) and 4 (replies)."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # the protocol's fixed descriptors 3 and 4 in the child
            r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
            w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)  # dup2 makes them inheritable; Python's own descriptors are not
            os.dup2(w, 4)

        self._proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            close_fds=False,  # keeps 3 and 4, set in the child; nothing else is inheritable
            preexec_fn=child_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send one command and return its result; events seen meanwhile go to ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> dict:
        """The next event named ``method`` (earlier ones included), or ``TimeoutError``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read())
        raise TimeoutError(method)

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (SITE / "index.html").is_file():
        pytest.skip("the site is not built (make docs)")
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium (apt-get install chromium)")
    b = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        target = b.send("Target.createTarget", url="about:blank")["targetId"]
        session = b.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session)
        # offline, as in CI: only the site's own files may load
        b.send("Network.setBlockedURLs", session, urls=["http://*", "https://*"])
        yield b, session
    finally:
        b.close()


def _problems(events: list[dict]) -> list[str]:
    """Console errors and uncaught exceptions among ``events``, except blocked external URLs."""
    found = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            found.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            found.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            if entry.get("url", "").startswith(("http://", "https://")):
                continue  # blocked on purpose (MathJax's CDN): not the site's own file
            found.append(f"{entry['text']} {entry.get('url', '')}")
    return found


def _load(browser, page: str) -> dict:
    b, session = browser
    b.events.clear()
    b.send("Page.navigate", session, url=(SITE / page).as_uri())
    b.wait_for("Page.loadEventFired", PAGE_TIMEOUT_S)
    report = b.send("Runtime.evaluate", session, expression=PAGE_SCRIPT, returnByValue=True)
    return {"problems": _problems(b.events), **report["result"]["value"]}


def _ids(path: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_cleanly(browser, page):
    assert (SITE / page).is_file(), f"{page} is not in the built site"
    seen = _load(browser, page)
    assert not seen["problems"], f"{page}: console errors {seen['problems']}"
    broken = [i["src"] for i in seen["images"] if not i["ok"]]
    assert not broken, f"{page}: images that did not load: {broken}"
    dead = []
    for href in seen["links"]:
        url = urlparse(href)
        if url.scheme != "file":
            continue
        target = Path(unquote(url.path))
        if not target.exists():
            dead.append(href)
        elif url.fragment and target.suffix == ".html":
            ids = set(seen["ids"]) if target == SITE / page else _ids(target)
            if unquote(url.fragment) not in ids:
                dead.append(href)
    assert not dead, f"{page}: links that do not resolve: {dead}"


@pytest.mark.parametrize("page", [p for p in PAGES if p[:2].isdigit()])
def test_notebook_page_shows_its_figures(browser, page):
    """Each notebook page shows as many figures as its stored notebook holds."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(DOCS / page.replace(".html", ".ipynb"), as_version=4)
    n_png = sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )
    shown = [i for i in _load(browser, page)["images"] if i["ok"]]
    assert n_png > 0 and len(shown) >= n_png, f"{page}: {len(shown)} images, notebook has {n_png}"


def test_landing_page_screenshot(browser):
    b, session = browser
    _load(browser, "index.html")
    png = base64.b64decode(b.send("Page.captureScreenshot", session, format="png")["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # a rendered page, not blank
    out = DOCS / "_build" / "screenshots" / "index.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)


def test_every_figure_is_on_some_page():
    """Every PNG under docs/figures is embedded by some Markdown page of the site."""
    embed = re.compile(r"(?:\]\(|\{figure\}\s+|\{image\}\s+)([^)\s]+\.png)")  # ![](...), {figure}
    embedded = set()
    for page in DOCS.rglob("*.md"):
        if "_build" not in page.parts:
            text = page.read_text(encoding="utf-8")
            embedded |= {(page.parent / src).resolve() for src in embed.findall(text)}
    missing = sorted(
        p.relative_to(DOCS).as_posix()
        for p in (DOCS / "figures").rglob("*.png")
        if p.resolve() not in embedded
    )
    assert not missing, f"figures on no page: {missing}"


def test_api_index_names_every_public_name():
    import lkstn

    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    missing = [n for n in lkstn.__all__ if not re.search(rf"`~[\w.]+\.{n}`", index)]
    assert not missing, f"lkstn.__all__ names missing from docs/api/index.md: {missing}"
