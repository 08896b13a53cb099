"""`python -m bench`: run the benchmark (see `python -m bench --help`)."""

import asyncio
import sys

from bench.options import parse_options
from bench.run import run

sys.exit(asyncio.run(run(parse_options())))
