"""Where the dashboard's turns come from. The UI talks only to a `TurnSource`.

- `LocalSource` wraps a `SwitchboardProxy` running in the same event loop:
  a bus subscription collects events, the store and journal give records,
  the pipeline retries and reroutes.
- `RemoteSource` (`switchboard attach URL`) reads the control API: the SSE
  event stream with the core's turn snapshots (so an attached dashboard holds
  the same records as a local one, and runs the same model on the same
  events), `/turns`, `/turns/{id}`, and the retry/reroute endpoints.
- `StaticSource` shows a fixed set of records and events (exported turns,
  tests, snapshots).

Every source buffers events instead of handing each one over: the bus
listener appends (chunks are only counted) and, at most every
`flush_interval` seconds, posts one `EventsReady` to the app, which calls
`drain()`. So a fast stream costs the proxy a counter increment per chunk,
and the UI redraws at a steady rate, slower while the proxy is very busy.
"""

from __future__ import annotations

from .base import SourceError, TurnSource
from .local import LocalSource
from .remote import RemoteSource, parse_event
from .static import StaticSource

__all__ = ["LocalSource", "RemoteSource", "SourceError", "StaticSource", "TurnSource",
           "parse_event"]
