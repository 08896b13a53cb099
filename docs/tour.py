"""Regenerate the README's tour: the example curl session, with real output, and docs/ui.png.

    .venv/bin/python docs/tour.py          needs PostgreSQL, RabbitMQ, curl, jq and Debian's chromium

It provisions a fresh database and vhost as the tests do (tests/support), starts the four services
on free ports, runs the session of tests/support/tour.py with bash and writes it with its output
into README.md between its markers (ids and tokens shortened, the noisiest headers left out;
tests/test_readme.py checks the block against a live run), then signs Bob in with Chromium, has him delete Alice's post and saves
the refusal as a 1100x700 screenshot. Everything is stopped, dropped and deleted at the end.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import async_playwright, expect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' support package provisions the stack

from auth_service.keys import to_pem  # noqa: E402
from tests.support import tour  # noqa: E402
from tests.support.backends import provisioned  # noqa: E402
from tests.support.stack import stack_env, start_stack  # noqa: E402

SCREENSHOT = ROOT / "docs" / "ui.png"
README = ROOT / "README.md"
CHROMIUM = "/usr/bin/chromium"


async def screenshot(gateway_url: str) -> None:
    """Alice writes two more posts; Bob, in Chromium, tries to delete one and is refused."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page(base_url=gateway_url, viewport={"width": 1100, "height": 700})
        for title, body in (
            ("Release notes", "Every service now checks every token itself."),
            ("Coffee", "The new machine on floor 3 works."),
        ):
            login = await page.request.post("/auth/login", data={"email": "alice@example.com", "password": "correct horse battery"})
            token = (await login.json())["access_token"]
            await page.request.post("/posts", data={"title": title, "body": body}, headers={"Authorization": f"Bearer {token}"})
        await page.goto("/")
        await page.fill("#login-email", "bob@example.com")
        await page.fill("#login-password", "another good password")
        await page.click("#login-button")
        await expect(page.locator("#session-status")).to_have_text("Signed in as Bob (user)")
        await expect(page.get_by_test_id("post-author").filter(has_text="…")).to_have_count(0)
        await page.locator('#posts li[data-testid="post"]').first.get_by_test_id("delete-post").click()
        await expect(page.locator("#alert")).to_have_text("You do not have permission to delete this post")
        await page.screenshot(path=SCREENSHOT)
        await browser.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as run_dir:
        key_file = Path(run_dir) / "signing-key.pem"
        key_file.write_text(to_pem(Ed25519PrivateKey.generate()))
        async with provisioned() as backends:
            stack = await start_stack(stack_env(backends.database_url, backends.amqp_url, key_file, backends.broker_users), Path(run_dir))
            try:
                output = await asyncio.to_thread(tour.run, stack.gateway_url, stack.env)
                readme = README.read_text()
                old = readme[readme.index(tour.BEGIN) : readme.index(tour.END) + len(tour.END)]
                README.write_text(readme.replace(old, tour.block(output)))
                print(output)
                print(f"rewrote the tour in {README}")
                await screenshot(stack.gateway_url)
                print(f"saved {SCREENSHOT}")
            finally:
                stack.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
