"""The dashboard in a real browser (Chromium through Playwright) against a real service.

Each test opens the page in a fresh browser context and acts as an operator would: reads the
panels, types the key, presses the buttons. Screenshots of every state go to the artifacts
directory (tests/service/browser/conftest.py); with TBML_UPDATE_SCREENSHOT=1 the first test
also writes docs/dashboard.png, the README's picture.
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.settings import PROJECT_ROOT
from tests.service.browser.conftest import (
    API_KEY,
    HOUR_MS,
    PAIRS,
    Console,
    Dashboard,
    screenshot,
)
from tests.service.conftest import wait_until

Page = tuple[Any, Console]


def open_dashboard(page: Any, dashboard: Dashboard) -> None:
    page.goto(dashboard.url)
    page.wait_for_selector("#pair-BTC [data-field=probability]")


def enter_key(page: Any, key: str = API_KEY) -> None:
    page.fill("#api-key", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-state:has-text('a key is kept')")


def start_training(page: Any, pair: str, model_type: str = "lstm") -> None:
    page.select_option("#train-pair", pair)
    page.select_option("#train-model", model_type)
    page.fill("#train-epochs", "3")
    page.fill("#train-priority", "2")
    page.click("#train-button")


def test_the_page_loads_without_console_errors_and_shows_the_four_pairs(
    dashboard: Dashboard, page: Page
) -> None:
    browser_page, console = page
    # A day of candles first, so that the charts and the live figures have something to show.
    before = dashboard.newest_candle("BTC")
    assert before is not None
    dashboard.market.advance(24)
    wait_until(lambda: dashboard.newest_candle("BTC") == before + 24 * HOUR_MS, timeout=30)

    def outcomes() -> bool:
        rows = dashboard.server.client.get(
            "/api/predictions/BTC/history", params={"limit": 100}
        ).json()["predictions"]
        return sum(r["outcome"] is not None for r in rows) >= 12

    wait_until(outcomes, timeout=60, interval=0.2)

    open_dashboard(browser_page, dashboard)
    cards = browser_page.locator("#pair-cards .card")
    assert cards.count() == 4
    assert [cards.nth(i).locator("h3 span").first.inner_text() for i in range(4)] == PAIRS
    for pair in PAIRS:
        browser_page.wait_for_selector(f"#pair-{pair} [data-field=candle]")
    # A trained pair: its probability, signal and a chart of predictions against outcomes.
    btc = browser_page.locator("#pair-BTC")
    probability = float(btc.locator("[data-field=probability]").inner_text())
    assert 0.0 <= probability <= 1.0
    assert btc.locator("[data-field=signal]").inner_text() in {"BUY", "SELL", "HOLD"}
    browser_page.wait_for_selector("#pair-BTC svg.chart polyline")
    browser_page.wait_for_selector("#pair-BTC svg.chart circle")
    # A pair without a model says so in words.
    assert "fallback" in browser_page.locator("#pair-XMR .flags").inner_text()
    # The other panels: models with MLflow links, the feed of every pair, the queue.
    browser_page.wait_for_selector("#model-table tr[data-pair=BTC][data-model=lstm] a")
    link = browser_page.locator("#model-table tr[data-pair=BTC][data-model=lstm] a").first
    assert link.get_attribute("href").endswith("/#/models/BTC-lstm/versions/1")
    # ETH's challenger beside its production version, waiting for live outcomes.
    challenger = browser_page.locator(
        "#model-table tr[data-pair=ETH][data-model=lstm][data-role=challenger]"
    )
    challenger.wait_for()
    assert "waiting" in challenger.inner_text()
    assert "/120 rows" in challenger.inner_text()
    version = challenger.locator("a").first.get_attribute("href")
    assert version.endswith("/#/models/ETH-lstm/versions/2")
    browser_page.wait_for_selector("#feed-table tr[data-pair=RVN]")
    assert browser_page.locator("#feed-table tr[data-pair=BTC] td").nth(1).inner_text() == "ok"
    browser_page.wait_for_selector("#queue-state #active-none")
    assert browser_page.locator("#banner").is_hidden()

    assert console.errors == []
    shot = None
    if os.environ.get("TBML_UPDATE_SCREENSHOT") == "1":
        shot = PROJECT_ROOT / "docs" / "dashboard.png"
    screenshot(browser_page, "loaded", also=shot)


def test_a_training_started_from_the_page_shows_in_the_queue_and_cancelling_it_ends_it(
    dashboard: Dashboard, page: Page
) -> None:
    browser_page, _ = page
    open_dashboard(browser_page, dashboard)
    enter_key(browser_page)

    start_training(browser_page, "ETH")

    browser_page.wait_for_selector("#action-message.ok")
    assert "train ETH lstm" in browser_page.inner_text("#action-message")
    queue = dashboard.server.client.get("/api/training/queue").json()["queue"]
    jobs = [j for j in queue["active"]["jobs"] + queue["queued"]["jobs"] if j["pair"] == "ETH"]
    assert len(jobs) == 1
    job = jobs[0]["id"]
    shown = browser_page.locator(
        f"#queue-state .active-job[data-job='{job}'], #queued-jobs tr[data-job='{job}']"
    )
    shown.first.wait_for()
    screenshot(browser_page, "training-queued-or-active")
    # The dispatcher takes it within a moment: the page shows it training, with its epochs.
    browser_page.wait_for_selector(f"#queue-state .active-job[data-job='{job}']", timeout=60_000)
    assert "ETH lstm" in browser_page.inner_text(f".active-job[data-job='{job}']")
    assert "3 epochs" in browser_page.inner_text(f".active-job[data-job='{job}']")
    screenshot(browser_page, "training-active")

    browser_page.click(f".active-job[data-job='{job}'] button[data-action=cancel]")

    browser_page.wait_for_selector("#action-message.ok:has-text('cancel')")
    browser_page.wait_for_selector(f"#history tr[data-job='{job}'][data-status=cancelled]")
    assert browser_page.locator(f".active-job[data-job='{job}']").count() == 0
    status = dashboard.server.client.get(f"/api/training/job/{job}").json()["status"]
    assert status == "cancelled"
    screenshot(browser_page, "training-cancelled")


def test_a_new_candle_changes_the_pair_card_without_a_reload(
    dashboard: Dashboard, page: Page
) -> None:
    browser_page, _ = page
    open_dashboard(browser_page, dashboard)
    card = browser_page.locator("#pair-BTC [data-field=candle]")
    before = int(card.get_attribute("data-candle-time"))
    browser_page.evaluate("window.__sameDocument = true")

    dashboard.market.advance()

    browser_page.wait_for_selector(
        f"#pair-BTC [data-field=candle][data-candle-time='{before + HOUR_MS}']"
    )
    assert browser_page.evaluate("window.__sameDocument") is True
    assert "stream: live" in browser_page.inner_text("#stream-status")
    screenshot(browser_page, "new-candle")


def test_an_action_without_the_key_shows_the_api_refusal(dashboard: Dashboard, page: Page) -> None:
    browser_page, _ = page
    open_dashboard(browser_page, dashboard)
    assert "no key" in browser_page.inner_text("#key-state")
    refusal = dashboard.server.client.post("/api/train/BTC/lstm", json={"epochs": 3})
    assert refusal.status_code == 401

    start_training(browser_page, "BTC")

    browser_page.wait_for_selector("#action-message.error")
    text = browser_page.inner_text("#action-message")
    assert refusal.json()["error"] in text
    assert "401" in text
    queue = dashboard.server.client.get("/api/training/queue").json()["queue"]
    assert not [j for j in queue["active"]["jobs"] + queue["queued"]["jobs"] if j["pair"] == "BTC"]
    screenshot(browser_page, "refused-without-key")


def test_the_root_redirects_to_the_dashboard_and_the_page_allows_only_its_own_origin(
    dashboard: Dashboard,
) -> None:
    client = dashboard.server.client
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307
    assert root.headers["location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "style-src 'self'" in policy
    missing = client.get("/dashboard/static/secret.py")
    assert missing.status_code == 404
    assert "dashboard.js" in missing.json()["error"]


def test_a_failing_route_shows_a_banner_naming_it_and_the_page_recovers(
    dashboard: Dashboard, page: Page
) -> None:
    browser_page, _ = page
    open_dashboard(browser_page, dashboard)
    browser_page.wait_for_selector("#queue-state #active-none")
    assert browser_page.locator("#banner").is_hidden()

    # The queue route fails (as a restarting service answers), then the service returns.
    def unavailable(route: Any) -> None:
        route.fulfill(
            status=503,
            content_type="application/json",
            body='{"error": "the service is restarting", "status": 503}',
        )

    browser_page.route("**/api/training/queue", unavailable)
    browser_page.wait_for_selector("#banner:not([hidden])", timeout=20_000)
    text = browser_page.inner_text("#banner")
    assert "GET /api/training/queue failed" in text
    assert "503: the service is restarting" in text
    screenshot(browser_page, "route-failing")

    browser_page.unroute("**/api/training/queue")
    browser_page.wait_for_selector("#banner", state="hidden", timeout=20_000)
    assert "problems" not in browser_page.inner_text("#service-status")
    screenshot(browser_page, "recovered")


def test_the_backtest_panel_says_there_is_none_then_links_the_newest(
    dashboard: Dashboard, page: Page
) -> None:
    from service.routes import backtest as route
    from tests.service.routes.test_backtests import _record

    browser_page, console = page
    route._kept.clear()
    open_dashboard(browser_page, dashboard)
    browser_page.wait_for_selector("#backtest-summary:has-text('No backtest yet')")
    assert "make backtest" in browser_page.inner_text("#backtest-summary")

    # A finished backtest in the service's tracking store (written as `tbml backtest` writes
    # its run; tests/mlproject/test_backtest.py reads a real one through the same route).
    settings = dashboard.server.state.settings
    run_id = _record(settings.tracking_uri, name="a year", status="FINISHED", returned=-0.139)
    route._kept.clear()
    open_dashboard(browser_page, dashboard)
    browser_page.wait_for_selector("#backtest-summary a")
    text = browser_page.inner_text("#backtest-summary")
    assert "BTC, ETH lightgbm" in text
    assert "after fees -13.9 %" in text
    assert "buy-and-hold +150.0 %" in text
    link = browser_page.locator("#backtest-summary a").get_attribute("href")
    assert link.endswith(f"/runs/{run_id}")
    assert console.errors == []
    screenshot(browser_page, "backtest")
