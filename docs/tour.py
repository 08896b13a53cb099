"""Regenerate the README's tour: the example curl session, with real output, and docs/ui.png.

    .venv/bin/python docs/tour.py          needs PostgreSQL, RabbitMQ, curl, jq and Debian's chromium

It provisions a fresh database and vhost as the tests do (tests/support), starts the four services
on free ports, runs SESSION with bash and prints it with its output (ids and tokens shortened, the
noisiest headers left out), then signs Bob in with Chromium, has him delete Alice's post and saves
the refusal as a 1100x700 screenshot. Everything is stopped, dropped and deleted at the end.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import async_playwright, expect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from auth_service.keys import to_pem  # noqa: E402
from tests.support.backends import provision  # noqa: E402
from tests.support.stack import Stack, stack_env  # noqa: E402

SCREENSHOT = ROOT / "docs" / "ui.png"
CHROMIUM = "/usr/bin/chromium"
SESSION = r"""
show() { printf '$ %s\n' "$1"; eval "$1"; printf '\n'; }
show "curl -s \$GW/auth/register -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\", \"display_name\": \"Alice\"}'"
show "curl -s \$GW/auth/login -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\"}'"
show "ALICE=\$(curl -s \$GW/auth/login -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\"}' | jq -r .access_token)"
show "curl -s \$GW/posts -H \"Authorization: Bearer \$ALICE\" -H 'Content-Type: application/json' \\
    -d '{\"title\": \"Hello\", \"body\": \"My first post.\"}'"
POST=$(curl -s "$GW/posts?limit=1" | jq -r '.items[0].id')
curl -s $GW/auth/register -H 'Content-Type: application/json' \
    -d '{"email": "bob@example.com", "password": "another good password", "display_name": "Bob"}' >/dev/null
echo '# Bob registers and logs in the same way ($BOB), then tries to delete Alice'"'"'s post ($POST, its id):'
BOB=$(curl -s $GW/auth/login -H 'Content-Type: application/json' \
    -d '{"email": "bob@example.com", "password": "another good password"}' | jq -r .access_token)
show "curl -si -X DELETE \$GW/posts/\$POST -H \"Authorization: Bearer \$BOB\""
"""
LEFT_OUT = re.compile(r"^(Date|Server|Content-Length|Connection|Keep-Alive): .*\n", re.MULTILINE | re.IGNORECASE)


def shorten(text: str) -> str:
    text = re.sub(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", r"\1-…", text)
    text = re.sub(r"\b(eyJ[\w-]{16})[\w-]*\.[\w-]+\.[\w-]+", r"\1…", text)
    text = re.sub(r"\b([0-9a-f]{8})[0-9a-f]{24}\b", r"\1…", text)  # request ids
    return LEFT_OUT.sub("", text.replace("\r\n", "\n"))


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
    backends = await provision()
    with tempfile.TemporaryDirectory() as run_dir:
        key_file = Path(run_dir) / "signing-key.pem"
        key_file.write_text(to_pem(Ed25519PrivateKey.generate()))
        stack = Stack(stack_env(backends.database_url, backends.amqp_url, key_file), Path(run_dir))
        try:
            stack.start("auth")
            await stack.wait_ready("auth")
            for service in ("users", "posts", "gateway"):
                stack.start(service)
            await stack.wait_ready("gateway")
            env = {**stack.env, "GW": stack.gateway_url}
            session = await asyncio.to_thread(
                subprocess.run, ["bash", "-c", SESSION], env=env, capture_output=True, text=True, timeout=60, check=True
            )
            print(shorten(session.stdout))
            await screenshot(stack.gateway_url)
            print(f"saved {SCREENSHOT}")
        finally:
            stack.stop_all()
            await backends.drop_database()  # type: ignore[attr-defined]
            for cleanup in backends.cleanups:
                cleanup()


if __name__ == "__main__":
    asyncio.run(main())
