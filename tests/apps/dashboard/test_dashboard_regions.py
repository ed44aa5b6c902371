"""The Regions panel in headless Chromium: two nodes (regions) on loopback, one stopped.

eu and us are nodes served by uvicorn in this process, each naming the other in
``peers``. us is stopped (its port closed), started again on the same port from its
data directory, then stopped once more: eu's page must shade both intervals us was
unreachable and say in words that it is unreachable now. ``SWARMGUARD_DOCS_SCREENSHOTS=1``
writes the panel to docs/dashboard-regions.png. Also: a stored token the node rejects
brings the token prompt back, saying so.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from .cdp import Browser, need_browser
from .conftest import LoopbackNode, loopback_socket
from .test_dashboard_browser import keep, only_loopback, plotted

SHADES = ("Array.from(document.querySelectorAll('#regions .shapelayer path'))"
          ".filter(p => (p.style.fill || p.getAttribute('fill') || '').replace(/ /g, '') === 'rgb(245,194,122)').length")


@pytest.fixture
def browser(tmp_path):
    need_browser()
    b = Browser(tmp_path / "profile", height=1400)
    yield b
    b.close()


def _wait(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)
    return value


def _peer(node: LoopbackNode) -> dict:
    return node.http.get("/v1/cluster").json()["peers"][0]


def _window(node: LoopbackNode, rng, prefix: str, n: int = 60) -> None:
    X = rng.normal(size=(n, 3))
    node.post_behaviors([{"agent_id": f"{prefix}-{i}", "features": X[i].tolist()} for i in range(n)])
    node.close_window()


@pytest.mark.slow          # ~30 s: us must stay away past the 5 s of staleness allowed
def test_the_regions_panel_shades_the_partition_and_names_the_unreachable_peer(tmp_path, browser):
    rng = np.random.default_rng(11)
    eu_sock, us_sock = loopback_socket(), loopback_socket()
    eu_url, us_url = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in (eu_sock, us_sock))
    us_port = us_sock.getsockname()[1]

    def start_us():
        return LoopbackNode(tmp_path / "us", tokens=False, sock=loopback_socket(us_port) if started else us_sock,
                            region="us", peers=(eu_url,), sync_seconds=0.2)

    started = False
    eu = LoopbackNode(tmp_path / "eu", tokens=False, sock=eu_sock, region="eu", peers=(us_url,), sync_seconds=0.2)
    us = start_us()
    started = True
    try:
        def reachable(want: bool) -> None:
            _wait(f"eu seeing us {'reachable' if want else 'unreachable'}", lambda: _peer(eu)["reachable"] is want)

        # in sync: both regions' agents in eu's view
        _window(us, rng, "u")
        for _ in range(2):
            reachable(True)
            _window(eu, rng, "e")
            time.sleep(0.6)
        # us stops: eu's syncs fail, its data from us ages past the 5 s allowed
        us.stop()
        for _ in range(3):
            reachable(False)
            time.sleep(2.2)
            _window(eu, rng, "e")
        # us is back (same port, same data dir): the partition ends
        us = start_us()
        for _ in range(2):
            reachable(True)
            _window(eu, rng, "e")
            time.sleep(0.6)
        # and gone again: unreachable now
        us.stop()
        for _ in range(2):
            reachable(False)
            time.sleep(1.2)
            _window(eu, rng, "e")
        cluster = eu.http.get("/v1/dashboard/cluster").json()
        assert [(p["peer"], p["ongoing"]) for p in cluster["partitions"]] == [(us_url, False), (us_url, True)]
        assert len(cluster["at"]) == 9

        browser.open(eu.url + "/")
        browser.wait_for("document.body.dataset.ready === 'yes'", 60, "the first refresh")
        browser.wait_for(plotted("regions"), 30, "the regions chart")
        # the shaded partitions, drawn (Plotly's shape layer), labelled with the region cut off
        assert browser.wait_for(SHADES + " === 2", 15, "two shaded partitions")
        labels = browser.evaluate("document.getElementById('regions')._fullLayout.annotations.map(a => a.text)")
        assert labels == ["us unreachable", "us unreachable (now)"]
        traces = browser.evaluate("document.getElementById('regions').data.map(t => t.name)")
        assert traces == ["eu node confidence", "us confidence part", "us staleness (s)"]
        # us's staleness grew while it was cut off, and its part of the confidence fell below 1
        us_part = browser.evaluate("document.getElementById('regions').data[1].y")
        assert us_part[0] == 1.0 and min(us_part[2:5]) < 1.0, us_part
        # in words: which peer is unreachable now
        text = browser.evaluate("document.getElementById('regions-text').textContent")
        assert f"Unreachable now: {us_url} (region us)" in text, text
        assert browser.evaluate("document.getElementById('regions-text').dataset.peers") == "unreachable"
        keep(browser.screenshot(tmp_path / "regions.png", "#regions-section"), "dashboard-regions.png")
        browser.pump(0.3)
        assert not browser.errors, browser.errors
        assert not only_loopback(browser.requests), only_loopback(browser.requests)
        # us comes back while the page is open: the text follows without a window closing
        us = start_us()
        reachable(True)
        text = browser.wait_for("(() => { const t = document.getElementById('regions-text');"
                                " return t.dataset.peers === 'reachable' && t.textContent; })()", 30, "us reachable in the text")
        assert f"Reachable: {us_url} (region us)" in text and "Unreachable now" not in text
        assert not browser.errors, browser.errors
    finally:
        browser.open("about:blank")        # let go of /v1/events before the nodes stop
        browser.pump(0.3)
        for node in (us, eu):
            if node.thread.is_alive():
                node.stop()


def test_a_single_node_says_so_and_how_to_add_peers(tmp_path, browser):
    served = LoopbackNode(tmp_path, tokens=False, region="eu")
    try:
        _window(served, np.random.default_rng(2), "a")
        browser.open(served.url + "/")
        browser.wait_for("document.body.dataset.ready === 'yes'", 60, "the first refresh")
        text = browser.evaluate("document.getElementById('regions-text').textContent")
        assert text.startswith("Single node (region eu): no peers") and "--peers" in text and "--peer-token-file" in text
        assert browser.evaluate(SHADES) == 0
        assert not browser.errors, browser.errors
    finally:
        browser.open("about:blank")
        browser.pump(0.3)
        served.stop()


MARKUP_REGION = 'eu <i>west</i> <img src=x onerror="window.__injected=1">'


def test_a_region_name_with_markup_is_shown_as_text_in_the_words_and_the_legend(tmp_path, browser):
    """Region names come from settings and from peers' answers: the panel shows them as the
    characters they are, in its words and in Plotly's legend (whose text is a small HTML
    dialect), and nothing in them runs or becomes an element."""
    served = LoopbackNode(tmp_path, tokens=False, region=MARKUP_REGION)
    try:
        _window(served, np.random.default_rng(4), "a")
        browser.open(served.url + "/")
        browser.wait_for("document.body.dataset.ready === 'yes'", 60, "the first refresh")
        browser.wait_for(plotted("regions"), 30, "the regions chart")
        text = browser.evaluate("document.getElementById('regions-text').textContent")
        assert text.startswith(f"Single node (region {MARKUP_REGION}): no peers"), text
        legend = browser.evaluate("Array.from(document.querySelectorAll('#regions .legendtext')).map(t => t.textContent)")
        assert legend == [f"{MARKUP_REGION} confidence", f"{MARKUP_REGION} staleness (s)"], legend
        assert browser.evaluate("document.querySelectorAll('#regions-section img, #regions-section i').length") == 0
        browser.pump(0.3)
        assert browser.evaluate("window.__injected === undefined")
        assert not [e for e in browser.errors if "/x" not in e], browser.errors
    finally:
        browser.open("about:blank")
        browser.pump(0.3)
        served.stop()


MARKUP_COHORT = 'c <i>x</i> <img src=y onerror="window.__injected=2">'


def test_a_cohort_name_with_markup_is_shown_as_text_in_the_swim_lanes(tmp_path, browser):
    """Cohort names come from the agents being ingested: the swim lanes' rows (Plotly tick
    labels, a small HTML dialect) show them as the characters they are, and nothing runs."""
    served = LoopbackNode(tmp_path, tokens=False)
    try:
        X = np.random.default_rng(5).normal(size=(60, 3))
        served.post_behaviors([{"agent_id": f"m-{i}", "features": X[i].tolist(), "cohort": MARKUP_COHORT}
                               for i in range(60)])
        served.close_window()
        browser.open(served.url + "/")
        browser.wait_for("document.body.dataset.ready === 'yes'", 60, "the first refresh")
        browser.wait_for(plotted("cohort-lanes"), 30, "the cohort swim lanes")
        ticks = browser.evaluate("Array.from(document.querySelectorAll('#cohort-lanes .ytick text'))"
                                 ".map(t => t.textContent)")
        assert any(MARKUP_COHORT in t for t in ticks), ticks
        assert browser.evaluate("document.querySelectorAll('#cohort-lanes img, #cohort-lanes i, "
                                "#agent-lanes img, #agent-lanes i').length") == 0
        browser.pump(0.3)
        assert browser.evaluate("window.__injected === undefined")
        assert not [e for e in browser.errors if "/y" not in e], browser.errors
    finally:
        browser.open("about:blank")
        browser.pump(0.3)
        served.stop()
