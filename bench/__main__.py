"""`python -m bench`: run the benchmark (see `python -m bench --help`)."""

import asyncio
import sys

import uvloop

from bench.options import parse_options
from bench.run import run

options = parse_options()
# The broker `delete-post` driver is this process's own CommandClient: on uvloop, like the
# services and the gateway that send commands in production (`--loop asyncio` for the plain loop).
sys.exit(uvloop.run(run(options)) if options.loop == "uvloop" else asyncio.run(run(options)))
