"""The web UI at `/`, end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright).

Each test uses its own browser context (its own localStorage, so its own signed-in person) and
waits with Playwright's auto-retrying expectations, never with sleeps. A screenshot of the key
moment of each test, and one of every page when the test ends, are kept under
`artifacts/screenshots/`.

The browser is never downloaded: without /usr/bin/chromium (`apt-get install chromium`) this module
is skipped, unless REQUIRE_CHROMIUM is set (CI sets it), where that is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from tests.support.accounts import User, token_claims
from tests.support.stack import ROOT, Stack

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    reason = "the web UI tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    if os.environ.get("REQUIRE_CHROMIUM"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect.set_options(timeout=10_000)

OpenPage = Callable[[str], Awaitable[Page]]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Playwright gives every launch a fresh, temporary user-data directory.
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def open_page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[OpenPage]:
    """Opens the UI in a new browser context (one per person); screenshots each page at the end."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    opened: list[tuple[str, Page]] = []
    errors: list[str] = []

    async def open_(who: str) -> Page:
        context = await browser.new_context(base_url=stack.gateway_url, viewport={"width": 1000, "height": 900})
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{who}: {error}"))
        # What the Content-Security-Policy blocks only shows on the console; it would break the page.
        page.on("console", lambda message: errors.append(f"{who}: {message.text}") if "Content Security Policy" in message.text else None)
        opened.append((who, page))
        await page.goto("/")
        await expect(page.locator("#posts")).to_have_attribute("aria-busy", "false")  # first page loaded
        return page

    yield open_
    for who, page in opened:
        await page.screenshot(path=SCREENSHOTS / f"{request.node.name}-{who}-end.png", full_page=True)
        await page.context.close()
    assert not errors, f"uncaught script errors: {errors}"


async def snapshot(page: Page, name: str) -> None:
    await expect(page.get_by_test_id("post-author").filter(has_text="…")).to_have_count(0)  # names loaded
    await page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


async def log_in(page: Page, user: User) -> None:
    await page.fill("#login-email", user.email)
    await page.fill("#login-password", user.password)
    await page.click("#login-button")
    await expect(page.locator("#session-status")).to_have_text(re.compile(rf"^Signed in as {re.escape(user.display_name)}\b"))
    await expect(page.locator("#posts")).to_have_attribute("aria-busy", "false")


async def write_post_via_api(http: aiohttp.ClientSession, author: User) -> str:
    title = f"Post {uuid4().hex[:8]}"
    async with http.post("/posts", json={"title": title, "body": "Written through the API."}, headers=author.auth) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def post_exists(db: asyncpg.Pool, post_id: str) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.posts WHERE id = $1::uuid)", post_id))


def post_item(page: Page, post_id: str):  # noqa: ANN201 - a Playwright Locator
    return page.locator(f'#posts li[data-testid="post"][data-post-id="{post_id}"]')


async def test_sign_up_log_in_write_a_post_and_log_out(open_page: OpenPage, db: asyncpg.Pool) -> None:
    page = await open_page("person")
    email, password, name = f"ui-{uuid4().hex[:12]}@example.com", f"pw-{uuid4().hex}", f"Ui Person {uuid4().hex[:4]}"

    await page.fill("#signup-email", email)
    await page.fill("#signup-display-name", name)
    await page.fill("#signup-password", password)
    await page.click("#signup-button")
    await expect(page.locator("#notice")).to_have_text(f"Account created for {email}. You can log in now.")
    await expect(page.locator("#login-email")).to_have_value(email)

    await page.fill("#login-password", password)
    await page.click("#login-button")
    await expect(page.locator("#session-status")).to_have_text(f"Signed in as {name} (user)")
    await expect(page.locator("#logout-button")).to_be_visible()
    await expect(page.locator("#login-form")).to_be_hidden()

    title = f"Hello from the browser {uuid4().hex[:6]}"
    await page.fill("#new-post-title", title)
    await page.fill("#new-post-body", "First post.\nWritten in Chromium.")
    await page.click("#new-post-submit")
    await expect(page.locator("#notice")).to_have_text("Post published.")
    newest = page.locator('#posts li[data-testid="post"]').first
    await expect(newest.get_by_test_id("post-title")).to_have_text(title)
    await expect(newest.get_by_test_id("post-author")).to_have_text(name)
    await expect(page.locator("#new-post-title")).to_have_value("")
    post_id = await newest.get_attribute("data-post-id")
    assert post_id and await post_exists(db, post_id)
    await expect(page.locator("#alert")).to_be_hidden()
    await snapshot(page, "signed-in-with-new-post")

    await page.click("#logout-button")
    await expect(page.locator("#session-status")).to_have_text("Not signed in")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#write-section")).to_be_hidden()
    await expect(page.get_by_test_id("delete-post")).to_have_count(0)
    assert await page.evaluate("localStorage.getItem('access_token')") is None


async def test_deleting_someone_elses_post_shows_the_refusal_and_keeps_the_post(
    open_page: OpenPage, new_user: Callable[..., Awaitable[User]], http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    author, other = await new_user("author"), await new_user("other")
    post_id = await write_post_via_api(http, author)
    page = await open_page("other")
    await log_in(page, other)

    post = post_item(page, post_id)
    await post.get_by_test_id("delete-post").click()
    await expect(page.locator("#alert")).to_have_text("You do not have permission to delete this post")
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(post).to_have_count(1)
    await expect(post.get_by_test_id("delete-post")).to_be_enabled()
    await expect(page.locator("#session-status")).to_have_text(f"Signed in as {other.display_name} (user)")
    await snapshot(page, "refused-delete")
    assert await post_exists(db, post_id)


async def test_the_author_deletes_their_own_post(
    open_page: OpenPage,
    new_user: Callable[..., Awaitable[User]],
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    wait_until: Callable[..., Awaitable[object]],
) -> None:
    author = await new_user("author")
    kept, doomed = await write_post_via_api(http, author), await write_post_via_api(http, author)
    page = await open_page("author")
    await log_in(page, author)

    await post_item(page, doomed).get_by_test_id("delete-post").click()
    await expect(page.locator("#notice")).to_have_text("Post deleted.")
    await expect(post_item(page, doomed)).to_have_count(0)
    await expect(post_item(page, kept)).to_have_count(1)
    await expect(page.locator("#alert")).to_be_hidden()
    await snapshot(page, "own-post-deleted")

    async def gone() -> bool:
        return not await post_exists(db, doomed)

    await wait_until(gone)
    assert await post_exists(db, kept)


async def post_row(db: asyncpg.Pool, post_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT title, body FROM posts.posts WHERE id = $1::uuid", post_id)


async def test_the_author_edits_their_post(
    open_page: OpenPage, new_user: Callable[..., Awaitable[User]], http: aiohttp.ClientSession, db: asyncpg.Pool
) -> None:
    author = await new_user("author")
    post_id = await write_post_via_api(http, author)
    page = await open_page("author")
    await log_in(page, author)
    post = post_item(page, post_id)

    await post.get_by_test_id("edit-post").click()
    await expect(post.get_by_test_id("edit-post-title")).to_be_focused()
    await post.get_by_test_id("edit-post-title").fill("Edited in Chromium")
    await post.get_by_test_id("edit-post-body").fill("A better body.\nOn two lines.")
    await snapshot(page, "editing-own-post")
    await post.get_by_test_id("edit-post-save").click()

    await expect(page.locator("#notice")).to_have_text("Post updated.")
    await expect(post.get_by_test_id("edit-post-form")).to_have_count(0)
    await expect(post.get_by_test_id("post-title")).to_have_text("Edited in Chromium")
    await expect(post.get_by_test_id("post-body")).to_have_text("A better body.\nOn two lines.")
    await expect(page.locator("#alert")).to_be_hidden()
    row = await post_row(db, post_id)
    assert row is not None and (row["title"], row["body"]) == ("Edited in Chromium", "A better body.\nOn two lines.")

    await page.reload()  # what the server holds, not what the page remembers
    await expect(post_item(page, post_id).get_by_test_id("post-title")).to_have_text("Edited in Chromium")


async def test_an_admin_who_is_not_the_author_cannot_edit_and_sees_why(
    open_page: OpenPage,
    new_user: Callable[..., Awaitable[User]],
    new_admin: Callable[[], Awaitable[User]],
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
) -> None:
    author, admin = await new_user("author"), await new_admin()
    post_id = await write_post_via_api(http, author)
    before = await post_row(db, post_id)
    page = await open_page("admin")
    await log_in(page, admin)
    post = post_item(page, post_id)

    await post.get_by_test_id("edit-post").click()
    await post.get_by_test_id("edit-post-title").fill("Rewritten by an admin")
    await post.get_by_test_id("edit-post-save").click()

    await expect(page.locator("#alert")).to_have_text("You do not have permission to edit this post")
    await expect(post.get_by_test_id("edit-post-form")).to_have_count(1)  # kept open, with what was typed
    await expect(post.get_by_test_id("edit-post-title")).to_have_value("Rewritten by an admin")
    await snapshot(page, "refused-edit")
    await post.get_by_test_id("edit-post-cancel").click()
    await expect(post.get_by_test_id("post-title")).not_to_have_text("Rewritten by an admin")
    assert await post_row(db, post_id) == before


async def test_an_admin_bans_an_author_whose_open_page_signs_out_and_shows_the_ban(
    open_page: OpenPage,
    new_user: Callable[..., Awaitable[User]],
    new_admin: Callable[[], Awaitable[User]],
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
    wait_until: Callable[..., Awaitable[object]],
) -> None:
    victim, admin = await new_user("victim"), await new_admin()
    post_id = await write_post_via_api(http, victim)
    victim_page = await open_page("victim")
    await log_in(victim_page, victim)
    await expect(victim_page.get_by_test_id("ban-author")).to_have_count(0)  # no Ban buttons for users

    admin_page = await open_page("admin")
    await log_in(admin_page, admin)
    await expect(admin_page.locator("#session-status")).to_have_text(f"Signed in as {admin.display_name} (admin)")
    await post_item(admin_page, post_id).get_by_test_id("ban-author").click()
    await expect(admin_page.locator("#notice")).to_have_text(f"{victim.display_name} is banned.")
    await expect(post_item(admin_page, post_id).get_by_test_id("post-author")).to_have_text(f"{victim.display_name} (banned)")
    await snapshot(admin_page, "admin-banned-author")

    async def ban_reached_every_service() -> bool:  # the contract allows one second
        return bool(
            await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM auth.banned_accounts WHERE user_id = $1::uuid)"
                " AND EXISTS (SELECT 1 FROM posts.banned_accounts WHERE user_id = $1::uuid)",
                victim.id,
            )
        )

    await wait_until(ban_reached_every_service, timeout=2.0)

    # The victim does nothing: their open page hears `user.banned` on /live, asks who they are,
    # and the server's 403 signs them out with the reason.
    await expect(victim_page.locator("#alert")).to_have_text("Your account is banned")
    await expect(victim_page.locator("#session-status")).to_have_text("Not signed in")
    await expect(victim_page.locator("#login-form")).to_be_visible()
    await expect(victim_page.locator("#write-section")).to_be_hidden()
    await snapshot(victim_page, "banned-user-signed-out")
    # What the page no longer offers, the API still refuses with the token the page held.
    title = f"Written while banned {uuid4().hex[:6]}"
    async with http.post("/posts", json={"title": title, "body": "Never published."}, headers=victim.auth) as response:
        assert response.status == 403, await response.text()
    assert not await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.posts WHERE title = $1)", title)


async def test_a_revoked_session_shows_the_detail_and_signs_out(
    open_page: OpenPage,
    new_user: Callable[..., Awaitable[User]],
    db: asyncpg.Pool,
    wait_until: Callable[..., Awaitable[object]],
) -> None:
    user = await new_user("twice")
    page = await open_page("first-tab")
    await log_in(page, user)
    token = await page.evaluate("localStorage.getItem('access_token')")
    assert token

    # A second browser context holding the same session logs out: the session is revoked everywhere.
    other = await open_page("second-tab")
    await other.evaluate("token => localStorage.setItem('access_token', token)", token)
    await other.reload()
    await expect(other.locator("#session-status")).to_have_text(f"Signed in as {user.display_name} (user)")
    await other.click("#logout-button")
    await expect(other.locator("#session-status")).to_have_text("Not signed in")

    session_id = token_claims(token)["sid"]

    async def revoked_in_posts() -> bool:  # the contract allows one second
        return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.revoked_sessions WHERE session_id = $1::uuid)", session_id))

    await wait_until(revoked_in_posts, timeout=2.0)

    await page.fill("#new-post-title", "After the session ended")
    await page.fill("#new-post-body", "This must not be published.")
    await page.click("#new-post-submit")
    await expect(page.locator("#alert")).to_have_text("Your session has ended; sign in again")
    await expect(page.locator("#session-status")).to_have_text("Not signed in")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#write-section")).to_be_hidden()
    await snapshot(page, "session-revoked")
    assert await page.evaluate("localStorage.getItem('access_token')") is None


async def test_a_person_sees_their_sessions_and_ends_the_other_device(
    open_page: OpenPage,
    new_user: Callable[..., Awaitable[User]],
    db: asyncpg.Pool,
    wait_until: Callable[..., Awaitable[object]],
) -> None:
    """Signed in on two devices (two browser contexts): the laptop lists both, its own marked, and
    ends the phone's; the phone's next action is refused and signs it out."""
    user = await new_user("two-devices")
    phone = await open_page("phone")
    await log_in(phone, user)
    phone_sid = token_claims(await phone.evaluate("localStorage.getItem('access_token')"))["sid"]
    laptop = await open_page("laptop")
    await log_in(laptop, user)
    laptop_sid = token_claims(await laptop.evaluate("localStorage.getItem('access_token')"))["sid"]

    await laptop.click("#reload-sessions")  # the phone signed in first, so the laptop already lists it; this is the button's test
    sessions = laptop.locator('#sessions li[data-testid="session"]')
    phone_item = laptop.locator(f'#sessions li[data-session-id="{phone_sid}"]')
    laptop_item = laptop.locator(f'#sessions li[data-session-id="{laptop_sid}"]')
    await expect(phone_item).to_be_visible()
    await expect(laptop_item.get_by_test_id("session-current")).to_have_text("(this device)")
    await expect(phone_item.get_by_test_id("session-current")).to_have_count(0)
    await expect(phone_item.get_by_test_id("session-agent")).to_contain_text("Chrome")
    await expect(phone_item.get_by_test_id("session-address")).to_have_text("127.0.0.1")
    await expect(phone_item.get_by_test_id("session-last-used")).not_to_be_empty()
    await laptop.screenshot(path=SCREENSHOTS / "sessions-listed.png", full_page=True)

    await phone_item.get_by_test_id("end-session").click()
    await expect(laptop.locator("#notice")).to_have_text("Session ended.")
    await expect(phone_item).to_have_count(0)
    await expect(laptop_item).to_be_visible()
    # Left: this device and the session the test's sign-up opened over the API.
    registered = sessions.filter(has_not=laptop.get_by_test_id("session-current"))
    await expect(registered).to_have_count(1)

    async def revoked_in_posts() -> bool:  # the contract allows one second
        return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM posts.revoked_sessions WHERE session_id = $1::uuid)", phone_sid))

    await wait_until(revoked_in_posts, timeout=2.0)
    await phone.fill("#new-post-title", "From the lost phone")
    await phone.fill("#new-post-body", "This must not be published.")
    await phone.click("#new-post-submit")
    await expect(phone.locator("#alert")).to_have_text("Your session has ended; sign in again")
    await expect(phone.locator("#session-status")).to_have_text("Not signed in")
    await expect(phone.locator("#sessions-section")).to_be_hidden()
    assert not await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM posts.posts WHERE title = 'From the lost phone' AND author_id = $1::uuid)", user.id
    )

    await laptop.screenshot(path=SCREENSHOTS / "sessions-after-ending-the-phone.png", full_page=True)


async def test_the_api_reference_renders_under_the_content_security_policy(browser: Browser, stack: Stack) -> None:
    context = await browser.new_context(base_url=stack.gateway_url)
    page = await context.new_page()
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)
    page.on("pageerror", lambda error: refused.append(str(error)))
    await page.goto("/docs")
    await expect(page.locator("#ops h2", has_text="POST /auth/login")).to_have_count(1)  # its script ran
    await context.close()
    assert not refused, refused


async def test_another_site_cannot_frame_the_ui(browser: Browser, stack: Stack) -> None:
    """Clickjacking: a page elsewhere that frames the UI (to lay a decoy over the admin's Ban
    button) gets nothing; the browser refuses the frame (frame-ancestors 'none')."""
    context = await browser.new_context()
    page = await context.new_page()
    async with page.expect_console_message(lambda message: "frame-ancestors" in message.text) as refusal:
        await page.set_content(f'<iframe id="victim" src="{stack.gateway_url}/"></iframe>')
    assert "has been blocked" in (await refusal.value).text
    await expect(page.frame_locator("#victim").locator("#login-button")).to_have_count(0)
    await context.close()
