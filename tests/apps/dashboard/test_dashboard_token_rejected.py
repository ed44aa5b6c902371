"""A token kept in the page's session storage that the node rejects, in headless Chromium."""

from __future__ import annotations

import pytest

from .cdp import Browser, need_browser
from .conftest import PLANTED
from .test_dashboard_browser import TABLE_AGENTS


@pytest.fixture
def browser(tmp_path):
    need_browser()
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def test_rejected_token_reprompts_in_regions_branch(fed_node, browser):
    """A token kept in session storage that the node rejects (401): the prompt comes back
    saying the node refused it, and no "node did not answer" banner; a good token opens the page."""
    browser.open(fed_node.url + "/")
    browser.wait_for("document.getElementById('token-dialog').open", 30, "the first prompt")
    browser.evaluate("sessionStorage.setItem('swarmguard.token', 'not-a-token-of-this-node'); true")
    browser.open(fed_node.url + "/")                    # a visit with the stale token stored
    message = browser.wait_for("(() => { const d = document.getElementById('token-dialog');"
                               " return d.open && document.getElementById('token-error').textContent; })()",
                               30, "the prompt saying why")
    assert "node refused" in message.lower(), message
    assert browser.evaluate("document.getElementById('banner').hidden"), \
        browser.evaluate("document.getElementById('banner').textContent")
    assert browser.evaluate(TABLE_AGENTS) == []
    browser.evaluate("document.getElementById('token-input').value = 't-read';"
                     "document.getElementById('token-form').requestSubmit(); true")
    browser.wait_for("document.body.dataset.ready === 'yes'", 60, "the page after a good token")
    assert set(PLANTED) <= set(browser.evaluate(TABLE_AGENTS))
    assert browser.evaluate("sessionStorage.getItem('swarmguard.token')") == "t-read"
    assert not any("not-a-token" in u or "t-read" in u for u in browser.requests)
    assert all("401" in e for e in browser.errors), browser.errors     # the refusals only
