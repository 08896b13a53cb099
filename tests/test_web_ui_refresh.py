"""The web UI stays signed in (issue 12, part 2), in Chromium, on a stack of its own whose access
tokens live 3 s and whose reuse detection has no grace: the UI renews the pair before each expiry,
with the refresh token in an HttpOnly cookie that no script in the page can read,
two tabs of one browser share the session without ever presenting a refresh token twice (with no
grace, a race would be taken for theft and sign both out), a request that meets an expired token
is refreshed and sent again, and a refresh token replayed from elsewhere signs every tab out with
the reason shown.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.refresh_cookie import COOKIE, COOKIE_PATH
from shared.tokens import LEEWAY_SECONDS
from tests.support.accounts import User, register, token_claims
from tests.support.backends import Backends, provisioned
from tests.support.stack import Stack, side_stack
from tests.test_web_ui import SCREENSHOTS, browser, log_in  # noqa: F401 - browser is a fixture

from playwright.async_api import Browser, BrowserContext, Page, expect  # isort: skip  (after test_web_ui's chromium check)

ACCESS_TTL = 3
ERRORS: list[str] = []  # the current test's uncaught script errors and CSP refusals


@pytest.fixture(scope="module")
async def short_backends() -> AsyncIterator[Backends]:
    async with provisioned() as backends:
        yield backends


@pytest.fixture(scope="module")
async def short(short_backends: Backends, signing_key: Ed25519PrivateKey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = {"ACCESS_TOKEN_TTL_SECONDS": str(ACCESS_TTL), "REFRESH_REUSE_GRACE_SECONDS": "0"}
    async with side_stack(short_backends, tmp_path_factory.mktemp("short-tokens"), settings, signing_key) as running:
        yield running


@pytest.fixture(scope="module")
async def short_http(short: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=short.gateway_url) as session:
        yield session


@pytest.fixture
async def context(browser: Browser, short: Stack) -> AsyncIterator[BrowserContext]:  # noqa: F811
    """One browser (one localStorage) for the test's tabs; no uncaught script error allowed."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    made = await browser.new_context(base_url=short.gateway_url, viewport={"width": 1000, "height": 900})
    ERRORS.clear()
    yield made
    await made.close()
    assert not ERRORS, ERRORS


async def open_tab(context: BrowserContext) -> Page:
    page = await context.new_page()
    page.on("pageerror", lambda error: ERRORS.append(str(error)))
    page.on("console", lambda message: ERRORS.append(message.text) if "Content Security Policy" in message.text else None)
    await page.goto("/")
    await expect(page.locator("#posts")).to_have_attribute("aria-busy", "false")
    return page


async def publish(page: Page, title: str) -> None:
    await page.fill("#new-post-title", title)
    await page.fill("#new-post-body", "Written while the tokens kept expiring.")
    await page.click("#new-post-submit")
    await expect(page.locator("#alert")).to_be_hidden()  # on failure, the report shows why
    await expect(page.locator("#notice")).to_have_text("Post published.")
    await expect(page.locator("#alert")).to_be_hidden()


def signed_in(user: User) -> re.Pattern[str]:
    return re.compile(rf"^Signed in as {re.escape(user.display_name)}\b")


async def test_two_tabs_stay_signed_in_across_several_expiries(context: BrowserContext, short_http: aiohttp.ClientSession) -> None:
    user = await register(short_http, "lasting")
    first = await open_tab(context)
    await log_in(first, user)
    second = await open_tab(context)  # the same browser: it starts in the same session
    await expect(second.locator("#session-status")).to_have_text(signed_in(user))

    tokens: set[str] = set()
    for round_ in range(8):  # 8 x 1.5 s = 4 expiries of a 3 s token
        page = (first, second)[round_ % 2]
        await publish(page, f"Post {round_} of a long visit")
        tokens.add(await page.evaluate("localStorage.getItem('access_token')"))
        await asyncio.sleep(1.5)
    for page in (first, second):
        await expect(page.locator("#session-status")).to_have_text(signed_in(user))
    assert len(tokens) >= 4, "the pair was not renewed before each expiry"
    assert len({token_claims(token)["sid"] for token in tokens}) == 1  # one session throughout
    await first.screenshot(path=SCREENSHOTS / "refresh-still-signed-in.png", full_page=True)


async def test_a_request_that_meets_an_expired_token_refreshes_and_is_sent_again(
    context: BrowserContext, short_http: aiohttp.ClientSession
) -> None:
    user = await register(short_http, "sleepy")
    page = await open_tab(context)
    await log_in(page, user)
    before = await page.evaluate("localStorage.getItem('access_token')")
    await page.evaluate("clearTimeout(refreshTimer)")  # as if the tab slept through the renewal
    await asyncio.sleep(ACCESS_TTL + LEEWAY_SECONDS + 1)
    await publish(page, "After a long sleep")
    assert await page.evaluate("localStorage.getItem('access_token')") != before
    await expect(page.locator("#session-status")).to_have_text(signed_in(user))


async def refresh_cookie(context: BrowserContext) -> dict[str, Any]:
    found = [c for c in await context.cookies() if c["name"] == COOKIE]
    assert len(found) == 1, found
    return dict(found[0])


async def test_no_script_in_the_page_can_read_the_refresh_token(context: BrowserContext, short_http: aiohttp.ClientSession) -> None:
    user = await register(short_http, "guarded")
    page = await open_tab(context)
    await log_in(page, user)
    cookie = await refresh_cookie(context)
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (True, True, "Strict", COOKIE_PATH)
    # What an injected script could reach: the page's cookies, its storage, the answers it fetches.
    seen = await page.evaluate(
        """async () => {
            const refreshed = await fetch("/auth/refresh", {method: "POST", headers: {"Refresh-Token-Transport": "cookie"}});
            return {cookie: document.cookie, storage: JSON.stringify({...localStorage}), answer: await refreshed.text()};
        }"""
    )
    renewed = await refresh_cookie(context)
    assert renewed["value"] != cookie["value"]  # the script did refresh (it can use the session)...
    for token in (cookie["value"], renewed["value"]):  # ...but never saw a refresh token
        assert token not in seen["cookie"] and token not in seen["storage"] and token not in seen["answer"]
    assert "refresh_token" not in seen["answer"] and "access_token" in seen["answer"]


async def test_a_replayed_refresh_token_signs_every_tab_out(context: BrowserContext, short_http: aiohttp.ClientSession) -> None:
    user = await register(short_http, "robbed")
    first = await open_tab(context)
    await log_in(first, user)
    second = await open_tab(context)
    await expect(second.locator("#session-status")).to_have_text(signed_in(user))
    # Stolen from the browser's cookie store (no script in the page could read it).
    stolen = (await refresh_cookie(context))["value"]

    # Once the UI has used it, a thief's copy presented again is reuse: the session ends.
    for _ in range(100):
        if (await refresh_cookie(context))["value"] != stolen:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the UI never renewed its refresh token")
    async with short_http.post("/auth/refresh", json={"refresh_token": stolen}) as response:
        assert response.status == 401, await response.text()

    for page in (first, second):
        await expect(page.locator("#session-status")).to_have_text("Not signed in", timeout=15_000)
        await expect(page.locator("#alert")).to_have_text(re.compile("sign in again"))
        await expect(page.locator("#login-form")).to_be_visible()
    assert not [c for c in await context.cookies() if c["name"] == COOKIE]  # the refused refresh cleared it
    await second.screenshot(path=SCREENSHOTS / "refresh-reuse-signed-out.png", full_page=True)
