"""The two baselines, started as processes of their own: `hello_server`, and `echo_server` in
front of `echo_consumer` over this run's vhost."""

from __future__ import annotations

from uuid import uuid4

from bench.drivers import Context
from bench.processes import ProcessSet
from tests.support.stack import free_port

BASELINE_PROCESSES = ("hello", "echo_server", "echo_consumer")


async def start_baselines(processes: ProcessSet, ctx: Context) -> None:
    hello_port, echo_port, queue = free_port(), free_port(), f"bench.echo.{uuid4().hex[:8]}"
    processes.start("hello", "bench.hello_server", str(hello_port))
    processes.start("echo_consumer", "bench.echo_consumer", ctx.amqp_url, queue)
    processes.start("echo_server", "bench.echo_server", str(echo_port), ctx.amqp_url, queue)
    ctx.hello_url, ctx.echo_url = f"http://127.0.0.1:{hello_port}", f"http://127.0.0.1:{echo_port}"
    await processes.wait_ok(ctx.hello_url + "/")
    await processes.wait_ok(ctx.echo_url + "/", method="POST", body=b"{}")
