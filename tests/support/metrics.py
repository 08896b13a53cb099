"""Reading a process's Prometheus `/metrics` page: one sample, by its name and labels.

Parsed with prometheus_client's own parser, so label order, escaping and label-less metrics are
the exporter's business, not a regular expression's. A sample that is absent reads as 0: a
counter nothing has counted yet is not exported for its labels at all.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import Stack


async def metrics_text(url: str) -> str:
    """The `/metrics` page of the process whose HTTP address is `url`."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as response:
        assert response.status == 200, response.status
        return await response.text()


def sample_of(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` (`commands_total`, `command_batch_size_count`) with exactly
    `labels`, from a `/metrics` page's text; 0 when there is none."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def metric(url: str, name: str, **labels: str) -> float:
    """One sample, read now from the process at `url` (`sample_of` on its `/metrics`)."""
    return sample_of(await metrics_text(url), name, **labels)


async def batches_committed(stack: Stack) -> float:
    """Batches of two or more commands (group commit) every running posts_service process has
    committed since it started."""
    return sum([await metric(url, "command_batch_size_count") for url in (stack.http_url("posts"), *stack.replica_urls("posts"))])
