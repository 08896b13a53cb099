"""gateway: the HTTP API clients use. Checks session tokens, turns requests into commands on
RabbitMQ and answers with the service's reply. Nothing behind it relies on its checks."""
