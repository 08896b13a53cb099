"""auth_service: accounts, passwords, sessions and signing keys; issues and revokes tokens."""
