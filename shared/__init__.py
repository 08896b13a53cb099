"""The project's common library: settings, errors, the message envelope, token verification,
authorization helpers and the one consumer runner every service is built on."""
