"""Baseline 1: the barest aiohttp JSON server. `python -m bench.hello_server PORT`

`GET /` answers `{"hello": "world"}`: the ceiling of any aiohttp service on this machine.
"""

from __future__ import annotations

import sys

from aiohttp import web


async def hello(_: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


def main(port: int) -> None:
    app = web.Application()
    app.router.add_get("/", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
