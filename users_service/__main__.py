"""`python -m users_service` runs the service."""

from shared.service import run_service
from users_service.service import MIGRATIONS, NAME, wire

run_service(NAME, MIGRATIONS, wire)
