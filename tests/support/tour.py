"""The README's curl session: the commands, how their output is shortened for the page, and how
two outputs are compared once their run-specific values (ids, tokens, times) are masked.

docs/tour.py runs it to write the README's block; tests/test_readme.py runs it against the test
stack and checks the block is still what the server sends.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping

#: Runs under bash with GW set to the gateway's URL; needs curl and jq. `show` prints each
#: command the reader would type, then its output.
SESSION = r"""
show() { printf '$ %s\n' "$1"; eval "$1"; printf '\n'; }
show "curl -s \$GW/auth/register -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\", \"display_name\": \"Alice\"}'"
show "curl -s \$GW/auth/login -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\"}'"
show "ALICE=\$(curl -s \$GW/auth/login -H 'Content-Type: application/json' \\
    -d '{\"email\": \"alice@example.com\", \"password\": \"correct horse battery\"}' | jq -r .access_token)"
echo '# A login'"'"'s refresh_token ($REFRESH) buys a new pair in the same session, once:'
REFRESH=$(curl -s $GW/auth/login -H 'Content-Type: application/json' \
    -d '{"email": "alice@example.com", "password": "correct horse battery"}' | jq -r .refresh_token)
show "curl -s \$GW/auth/refresh -H 'Content-Type: application/json' -d \"{\\\"refresh_token\\\": \\\"\$REFRESH\\\"}\""
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

#: Headers that change every run or say nothing to a reader.
LEFT_OUT = re.compile(r"^(Date|Server|Content-Length|Connection|Keep-Alive|Content-Security-Policy): .*\n", re.MULTILINE | re.IGNORECASE)

#: Where the README's block starts and ends (docs/tour.py rewrites what is between).
BEGIN, END = "<!-- tour: written by docs/tour.py -->", "<!-- end of the tour -->"


def run(gateway_url: str, env: Mapping[str, str]) -> str:
    """The session's output against the gateway at `gateway_url`, shortened for the page."""
    result = subprocess.run(["bash", "-c", SESSION], env={**env, "GW": gateway_url}, capture_output=True, text=True, timeout=60, check=True)
    return "$ GW=" + "http://127.0.0.1:8080" + "\n" + shorten(result.stdout).rstrip("\n") + "\n"


def shorten(text: str) -> str:
    """Ids, tokens and request ids cut to their first characters; the noisiest headers left out."""
    text = re.sub(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", r"\1-…", text)
    text = re.sub(r"\b(eyJ[\w-]{16})[\w-]*\.[\w-]+\.[\w-]+", r"\1…", text)
    text = re.sub(r'("refresh_token":")([\w-]{8})[\w-]*"', r'\1\2…"', text)  # opaque: no eyJ to find it by
    text = re.sub(r"\b([0-9a-f]{8})[0-9a-f]{24}\b", r"\1…", text)  # request ids
    text = LEFT_OUT.sub("", text.replace("\r\n", "\n"))
    return re.sub(r"\n\n(?=\$ |# )", "\n", text)  # no blank line after a command that printed nothing


def masked(text: str) -> str:
    """What stays the same from run to run: every shortened id, token and time replaced by a mark."""
    text = re.sub(r"\b[0-9a-f]{8}-…", "<id>", text)
    text = re.sub(r"\beyJ[\w-]{16}…", "<token>", text)
    text = re.sub(r'"refresh_token":"[\w-]{8}…"', '"refresh_token":"<refresh token>"', text)
    text = re.sub(r"\b[0-9a-f]{8}…", "<request id>", text)
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "<time>", text)


def block(output: str) -> str:
    """The README's block for `output`, markers included."""
    return f"{BEGIN}\n```console\n{output}```\n{END}"


def readme_output(readme: str) -> str:
    """The session output the README shows (what is between the markers, fences stripped)."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    inner = readme[start:end].strip("\n")
    assert inner.startswith("```console\n") and inner.endswith("```"), "the tour block is not a console fence"
    return inner[len("```console\n") : -len("```")]
