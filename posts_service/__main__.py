"""`python -m posts_service` runs the service."""

from posts_service.service import MIGRATIONS, NAME, wire
from shared.service import run_service

run_service(NAME, MIGRATIONS, wire)
