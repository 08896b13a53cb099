"""The gateway's cache of public reads: answers kept as bytes with their ETag, dropped by events.

What it keeps: the 200 answers of `get-post`, of `list-posts` without a cursor (a first page, one
entry per `limit`) and of `get-user`, each serialized once with a strong ETag computed once
(gateway/conditional.py), so a hit does no JSON work. These commands are PUBLIC (shared/commands.py):
their answers do not depend on who asks, and nothing that needs a token is ever kept.

What makes an entry stale is stated once, in `STALE_AFTER`, by public event:
- the event itself, from the feed (gateway/event_feed.py), whichever gateway or broker client
  made the change: within the contract's second;
- this gateway's own 2xx answer to a command that emits such an event, before that answer leaves,
  so a caller always reads its own writes (`after_write`);
- the feed going down: everything is dropped, and nothing is served or kept until it is up again;
  it then starts empty, since events may have been missed meanwhile;
- the bound: the least recently used entries go first, by count and by bytes.

Not-found answers are not kept. A profile appears a moment after its account is registered
(`user.registered` is not a public event, so no gateway would hear it), and caching 404s of
made-up ids would let anyone push every real entry out of the LRU.

The fill race: a miss reads through the bus, and an invalidation may arrive while it waits. Each
miss holds a `Fill` ticket; an invalidation that touches its key (or drops everything) marks the
ticket stale, and a stale fill answers its caller but is not kept. So no answer read before an
invalidation outlives it in the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.conditional import Representation
from gateway.event_feed import FeedEvent
from gateway.metrics import GatewayMetrics
from shared.commands import ListPosts
from shared.declarations import Command

#: An entry's key: the command and the id it reads (or, for a first page, its limit).
Key = tuple[str, str]
Reason = Literal["event", "own_write", "feed_down", "gap"]

#: The public reads kept, and the payload field that names what each reads.
CACHED_READS: dict[str, str] = {"get-post": "post_id", "list-posts": "limit", "get-user": "user_id"}
DEFAULT_LIMIT = str(ListPosts.model_fields["limit"].default)


@dataclass(frozen=True, slots=True)
class Stale:
    """What a change makes stale: the entry of `command` named by the change's `field`, or, with
    no field, every entry of `command` (every first page)."""

    command: str
    field: str | None = None


#: By public event, what it makes stale. A post shows only its author's id, so a ban changes no
#: post and no page; a profile shows `banned`. A new post cannot have been read yet (no 404 is
#: kept), so only the pages change.
STALE_AFTER: dict[str, tuple[Stale, ...]] = {
    "post.created": (Stale("list-posts"),),
    "post.edited": (Stale("get-post", "post_id"), Stale("list-posts")),
    "post.deleted": (Stale("get-post", "post_id"), Stale("list-posts")),
    "user.banned": (Stale("get-user", "user_id"),),
}


def read_key(command: str, payload: Mapping[str, Any]) -> Key | None:
    """Where a public read's answer is kept, or None when it is not (a page after the first)."""
    if command == "list-posts":
        if payload.get("cursor") is not None:
            return None
        return (command, str(payload.get("limit", DEFAULT_LIMIT)))
    return (command, str(payload[CACHED_READS[command]]))


def stale_keys(event: str, data: Mapping[str, Any]) -> list[Stale | Key]:
    """What `event` with these fields makes stale: whole commands (a Stale) or single keys."""
    found: list[Stale | Key] = []
    for rule in STALE_AFTER.get(event, ()):
        found.append(rule if rule.field is None else (rule.command, str(data[rule.field])))
    return found


class Fill:
    """A miss on its way through the bus: kept when it comes back, unless made stale meanwhile."""

    __slots__ = ("key", "keep")

    def __init__(self, key: Key | None, keep: bool) -> None:
        self.key = key
        self.keep = keep


class ReadCache:
    """A bounded LRU of public answers; a listener of the event feed (see the module's docstring)."""

    def __init__(self, *, max_entries: int, max_bytes: int, metrics: GatewayMetrics) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Representation] = OrderedDict()
        self._bytes = 0
        #: The keys held, by command: a change to every first page finds them without a scan.
        self._keys: dict[str, set[Key]] = {command: set() for command in CACHED_READS}
        #: Misses in flight, by key: an invalidation of the key makes them stale.
        self._fills: dict[Key, list[Fill]] = {}
        #: Whether the feed is up: only then may an entry be served or kept.
        self._live = False
        self._was_down = False
        self._metrics = metrics
        outcomes = ("hit", "miss", "bypass")
        self._lookups = {(c, o): metrics.read_cache_lookups.labels(c, o) for c in CACHED_READS for o in outcomes}
        self._invalidations = {r: metrics.read_cache_invalidations.labels(r) for r in ("event", "own_write", "feed_down", "gap")}
        metrics.read_cache_live.set_function(lambda: int(self.live))
        metrics.read_cache_entries.set_function(lambda: len(self._entries))
        metrics.read_cache_bytes.set_function(lambda: self._bytes)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def live(self) -> bool:
        return self._live and self.max_entries > 0

    # -- reads ----------------------------------------------------------------------------------

    def get(self, key: Key) -> Representation | None:
        """The kept answer, counted as a hit; None on a miss (then `begin` the fill)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        self._lookups[key[0], "hit"].inc()
        return entry

    def begin(self, key: Key) -> Fill:
        """A miss: its answer will be kept if nothing makes it stale before `fill`."""
        if not self.live:
            self._lookups[key[0], "bypass"].inc()
            return Fill(key, keep=False)
        self._lookups[key[0], "miss"].inc()
        fill = Fill(key, keep=True)
        self._fills.setdefault(key, []).append(fill)
        return fill

    def fill(self, fill: Fill, body: bytes) -> Representation:
        """The answer of a miss, kept unless made stale since `begin` (its caller gets it anyway)."""
        entry = Representation.of(body)
        self.abandon(fill)
        if fill.keep and fill.key is not None and self.live:
            self._store(fill.key, entry)
        elif fill.key is not None and self.live:
            self._metrics.read_cache_stale_fills.inc()
        return entry

    def abandon(self, fill: Fill) -> None:
        """Forget a fill (done, or failed: an error is never kept)."""
        if fill.key is None:
            return
        waiting = self._fills.get(fill.key)
        if waiting is not None and fill in waiting:
            waiting.remove(fill)
            if not waiting:
                del self._fills[fill.key]

    def _store(self, key: Key, entry: Representation) -> None:
        if len(entry.body) > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._entries[key] = entry
        self._keys[key[0]].add(key)
        self._bytes += len(entry.body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self._keys[evicted_key[0]].discard(evicted_key)
            self._bytes -= len(evicted.body)
            self._metrics.read_cache_evictions.inc()

    # -- invalidation ---------------------------------------------------------------------------

    def invalidate(self, stale: Iterable[Stale | Key], reason: Reason) -> None:
        """Drop what is stale now, and keep any miss in flight for it from being kept."""
        for target in stale:
            if isinstance(target, Stale):
                self._drop_command(target.command)
            else:
                self._drop(target)
        self._invalidations[reason].inc()

    def after_write(self, command: Command, payload: Mapping[str, Any]) -> None:
        """This gateway answered `command` 2xx: drop what its events will make stale, at once."""
        stale = [target for event in command.emits if event in STALE_AFTER for target in stale_keys(event, payload)]
        if stale:
            self.invalidate(stale, "own_write")

    def clear(self, reason: Reason) -> None:
        self._entries.clear()
        self._bytes = 0
        for keys in self._keys.values():
            keys.clear()
        for fills in self._fills.values():
            for fill in fills:
                fill.keep = False
        self._invalidations[reason].inc()

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)
            self._keys[key[0]].discard(key)
        for fill in self._fills.get(key, ()):
            fill.keep = False

    def _drop_command(self, command: str) -> None:
        for key in list(self._keys[command]):
            self._drop(key)
        for key, fills in self._fills.items():
            if key[0] == command:
                for fill in fills:
                    fill.keep = False

    # -- the feed's listener --------------------------------------------------------------------

    def event(self, event: FeedEvent) -> None:
        if event.key in STALE_AFTER:
            self.invalidate(stale_keys(event.key, event.data), "event")

    def down(self) -> None:
        """Events may be missed from now on: nothing kept can be trusted, nothing new is kept."""
        self._live = False
        self._was_down = True
        self.clear("feed_down")

    def up(self) -> None:
        """Events arrive again; after a down, whatever happened in between was not heard: start empty."""
        if self._was_down:
            self.clear("gap")
        self._live = True
