"""The web UI is live, in a real headless Chromium: two browser contexts side by side.

One person watches the page; the changes are made elsewhere, over the HTTP API and by commands
put straight onto the broker (as the gateway would send them, with a valid token), and through
the other person's own page. Each change shows on the watcher's page within a second, without a
reload; a post its viewer has just deleted is never shown again. Each wait is Playwright's
auto-retrying expectation with a one-second timeout, started once the change has committed.
"""

from __future__ import annotations

from uuid import uuid4

import aiohttp

from tests.support.accounts import User
from tests.support.broker import BrokerProbe
from tests.test_web_ui import OpenPage, browser, log_in, open_page, post_item, snapshot, write_post_via_api  # noqa: F401 - fixtures

from playwright.async_api import Page, expect  # isort: skip  (after test_web_ui's chromium check)

#: The contract's bound: a change shows within a second of committing.
WITHIN_A_SECOND = 1_000


async def is_live(page: Page) -> None:
    await expect(page.locator("body")).to_have_attribute("data-live", "open")


async def broker_ok(reply: dict | None) -> dict:
    assert reply is not None and reply.get("ok") is True, reply
    return reply


async def test_changes_made_elsewhere_show_within_a_second_without_a_reload(
    open_page: OpenPage,  # noqa: F811 - the fixture
    new_user,
    admin: User,
    http: aiohttp.ClientSession,
    broker: BrokerProbe,
) -> None:
    author: User = await new_user("author")
    watcher = await open_page("watcher")
    await is_live(watcher)
    await watcher.evaluate("window.notReloaded = true")  # gone if the page reloads

    # Over the HTTP API: created, edited, deleted.
    post_id = await write_post_via_api(http, author)
    await expect(post_item(watcher, post_id)).to_have_count(1, timeout=WITHIN_A_SECOND)
    async with http.patch(f"/posts/{post_id}", json={"title": "Edited over the API"}, headers=author.auth) as response:
        assert response.status == 200
    await expect(post_item(watcher, post_id).get_by_test_id("post-title")).to_have_text("Edited over the API", timeout=WITHIN_A_SECOND)
    async with http.delete(f"/posts/{post_id}", headers=author.auth) as response:
        assert response.status == 204
    await expect(post_item(watcher, post_id)).to_have_count(0, timeout=WITHIN_A_SECOND)

    # By commands straight onto the broker: created, edited, the author banned, deleted.
    title = f"From the broker {uuid4().hex[:6]}"
    created = await broker_ok(await broker.command("create-post", {"title": title, "body": "b"}, token=author.token, as_process="gateway"))
    broker_post = created["result"]["id"]
    item = post_item(watcher, broker_post)
    await expect(item.get_by_test_id("post-title")).to_have_text(title, timeout=WITHIN_A_SECOND)
    await expect(item.get_by_test_id("post-author")).to_have_text(author.display_name)
    await broker_ok(
        await broker.command("edit-post", {"post_id": broker_post, "body": "Edited on the bus"}, token=author.token, as_process="gateway")
    )
    await expect(item.get_by_test_id("post-body")).to_have_text("Edited on the bus", timeout=WITHIN_A_SECOND)
    await broker_ok(await broker.command("ban-user", {"user_id": author.id, "reason": "spam"}, token=admin.token, as_process="gateway"))
    await expect(item.get_by_test_id("post-author")).to_have_text(f"{author.display_name} (banned)", timeout=WITHIN_A_SECOND)
    await snapshot(watcher, "live-banned-author")
    await broker_ok(await broker.command("delete-post", {"post_id": broker_post}, token=admin.token, as_process="gateway"))
    await expect(item).to_have_count(0, timeout=WITHIN_A_SECOND)

    assert await watcher.evaluate("window.notReloaded") is True
    assert "spam" not in await watcher.content()  # the ban's reason is never sent to the page


async def test_a_post_deleted_on_one_page_leaves_both_and_never_comes_back(
    open_page: OpenPage,  # noqa: F811 - the fixture
    new_user,
    http: aiohttp.ClientSession,
) -> None:
    author: User = await new_user("author")
    doomed, kept = await write_post_via_api(http, author), await write_post_via_api(http, author)
    own = await open_page("author")
    await log_in(own, author)
    watcher = await open_page("watcher")
    await is_live(own)
    await is_live(watcher)
    for page in (own, watcher):
        await expect(post_item(page, doomed)).to_have_count(1)

    # The author's page drops it on the 204; a stale list read that comes after must not bring it back.
    await post_item(own, doomed).get_by_test_id("delete-post").click()
    await expect(own.locator("#notice")).to_have_text("Post deleted.")
    await expect(post_item(own, doomed)).to_have_count(0)
    await expect(post_item(watcher, doomed)).to_have_count(0, timeout=WITHIN_A_SECOND)
    await own.evaluate("refreshPosts()")
    await expect(own.locator("#posts")).to_have_attribute("aria-busy", "false")
    await expect(post_item(own, kept)).to_have_count(1)
    await expect(post_item(own, doomed)).to_have_count(0)

    # A post written on the author's page appears on the watcher's.
    title = f"Written in the page {uuid4().hex[:6]}"
    await own.fill("#new-post-title", title)
    await own.fill("#new-post-body", "live")
    await own.click("#new-post-submit")
    await expect(own.locator("#notice")).to_have_text("Post published.")
    await expect(watcher.get_by_test_id("post-title").filter(has_text=title)).to_have_count(1, timeout=WITHIN_A_SECOND)


async def test_a_reload_event_reads_everything_again(
    open_page: OpenPage,  # noqa: F811 - the fixture
    new_user,
    http: aiohttp.ClientSession,
) -> None:
    """What the page does when the server says events were missed (`event: reload`)."""
    author: User = await new_user("author")
    watcher = await open_page("watcher")
    await is_live(watcher)
    # Written while the page hears nothing: handlers off, so only a full re-read can show it.
    await watcher.evaluate("for (const name of Object.keys(LIVE_HANDLERS)) if (name !== 'reload') LIVE_HANDLERS[name] = () => {}")
    post_id = await write_post_via_api(http, author)
    await watcher.wait_for_timeout(300)
    await expect(post_item(watcher, post_id)).to_have_count(0)
    await watcher.evaluate("LIVE_HANDLERS.reload({})")
    await expect(post_item(watcher, post_id)).to_have_count(1, timeout=WITHIN_A_SECOND)


async def test_a_live_update_keeps_an_open_edit_form_its_draft_and_its_focus(
    open_page: OpenPage,  # noqa: F811 - the fixture
    new_user,
    http: aiohttp.ClientSession,
) -> None:
    author: User = await new_user("author")
    post_id = await write_post_via_api(http, author)
    page = await open_page("author")
    await log_in(page, author)
    await is_live(page)
    await post_item(page, post_id).get_by_test_id("edit-post").click()
    title = page.locator(f"#edit-title-{post_id}")
    await title.fill("Half-typed")

    other = await write_post_via_api(http, author)  # the list is drawn again around the form
    await expect(post_item(page, other)).to_have_count(1, timeout=WITHIN_A_SECOND)
    await expect(title).to_have_value("Half-typed")
    await expect(title).to_be_focused()
    await page.keyboard.type(", then more")
    await expect(title).to_have_value("Half-typed, then more")
