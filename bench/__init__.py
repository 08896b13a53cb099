"""bench: the benchmark harness (issue 5).

`python -m bench` starts its own stack on a fresh database and vhost (or uses one already
running), measures two baselines and the stack's paths under load with wrk and an aio-pika
driver, and reports throughput, latency, CPU per request and memory, with the issue's targets
checked as PASS or FAIL. See README.md ("Benchmarks") and bench/RESULTS.md.
"""
