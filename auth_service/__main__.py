"""`python -m auth_service` runs the service; with a subcommand, an operator command."""

import sys

from auth_service.cli import main
from auth_service.service import MIGRATIONS, NAME, wire
from shared.service import run_service

if len(sys.argv) > 1:
    sys.exit(main(sys.argv[1:]))
run_service(NAME, MIGRATIONS, wire)
