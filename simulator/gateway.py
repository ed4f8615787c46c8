"""A gateway's cost-tracking request log for the demo, written from the simulated traffic.

Teams that route LLM calls through their own gateway log each request as one JSON line (the
format the exporter's `proxy_log` source reads). The demo has no gateway, so this writes the
log such a gateway would have written if it carried a fixed share (`share`, default 3/4) of
the simulated OpenAI and Anthropic chat traffic: one line per stream per 10 minutes, carrying
that slice's tokens (uncached input and output) and its cost at the simulator's prices. The
rest "bypasses" the gateway, which the exporter's gateway coverage panels then show.

The log starts `days` before now and grows as the simulator's clock passes each slice; a
restart of the simulator appends only what the file does not hold yet (its last timestamp).
User ids carry a key prefix and ip addresses are set, as real gateway logs do, so the demo
also shows that neither reaches a label.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from simulator import dataset as ds

log = logging.getLogger("simulator.gateway")

SLICE = 600  # seconds of traffic per log line and stream
_UPSTREAMS = ("openai", "anthropic")
_USERS = ("token:sk-demo-team-a", "token:sk-demo-team-b", "token:sk-demo-batch")


def _chat_streams(data: ds.Dataset) -> list[ds.Stream]:
    """The streams a chat gateway carries: completions with a model and output tokens."""
    return [
        s
        for provider in _UPSTREAMS
        for s in data.streams(provider)
        if s.model and "tokens.output" in s.measures and s.operation != "claude_code"
    ]


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def lines(data: ds.Dataset, start: int, end: int, share: Fraction) -> Iterator[str]:
    """The log lines of every whole slice in [start, end), in time order."""
    streams = _chat_streams(data)
    t = start - start % SLICE
    while t + SLICE <= end:
        for i, stream in enumerate(streams):
            amounts = data.amounts(stream, t, t + SLICE)
            tokens_in = int(amounts.get("tokens.input", 0) * share)
            tokens_out = int(amounts.get("tokens.output", 0) * share)
            if not tokens_in and not tokens_out:
                continue
            billed = sum(
                (
                    c.amount
                    for c in data.cost_lines(stream, t, t + SLICE)
                    if c.measure in ("tokens.input", "tokens.output")
                ),
                Decimal(0),
            )
            cost = (billed * share.numerator / share.denominator).quantize(Decimal("1e-9"))
            record = {
                "timestamp": _iso(t + SLICE - 1),
                "request_id": f"req-demo-{t}-{i}",
                "user_id": _USERS[(t // SLICE + i) % len(_USERS)],
                "ip_address": "192.0.2.10",
                "provider": stream.provider,
                "model": stream.model,
                "endpoint": f"/{stream.provider}/v1/chat/completions",
                "is_streaming": bool(i % 2),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "total_tokens": tokens_in + tokens_out,
                "total_cost": str(cost),
                "finish_reason": "stop",
            }
            yield json.dumps(record)
        t += SLICE


def _written_until(path: Path) -> int | None:
    """The end of the last slice the file holds (None when it is empty or missing)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            stamp = json.loads(line)["timestamp"]
        except (ValueError, KeyError, TypeError):
            continue
        return int(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()) + 1
    return None


class GatewayLog:
    """Appends the demo gateway's log as the simulated clock moves on (a daemon thread)."""

    def __init__(
        self,
        path: Path,
        data: ds.Dataset,
        now: Callable[[], int],
        days: int = 7,
        share: Fraction = Fraction(3, 4),
    ) -> None:
        self.path = path
        self.data = data
        self.now = now
        self.share = share
        first = now() - days * 86400
        self.until = max(_written_until(path) or first, first, data.start_ts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-log", daemon=True)

    def write_due(self) -> int:
        """Append every whole slice up to now; the number of lines written."""
        end = self.now() - self.now() % SLICE
        if end <= self.until:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self.path.open("a", encoding="utf-8") as f:
            for line in lines(self.data, self.until, end, self.share):
                f.write(line + "\n")
                written += 1
        self.until = end
        return written

    def start(self) -> GatewayLog:
        n = self.write_due()
        log.info("gateway log %s: %d lines written, appending as time passes", self.path, n)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(10):
            try:
                self.write_due()
            except OSError as exc:
                log.warning("gateway log %s: cannot append: %s", self.path, exc)
