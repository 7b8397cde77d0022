"""``flowlabel run``: the long-lived service that turns flow events into marked packets.

One asyncio loop runs everything: the sources (named pipe, firefly listener,
HTTP API) hand batches of events to :meth:`Daemon.submit`, which records them
in the :class:`~flowlabel.flowtable.FlowTable` and passes the changes to the
backends (eBPF, firefly); metrics count every event by source and outcome.

Lifecycle: the PID file is written first; the active flows of the last run are
read back (:class:`~flowlabel.persistence.Persistence`: the state file and its
journals) and marked again before any source opens (every applied batch is
journaled, so a killed daemon loses nothing); the daemon logs a line
containing ``ready`` (and tells systemd, under ``Type=notify``) once it serves.
SIGTERM or SIGINT close the sources, write the state file, detach the
classifier and remove the pipe and the PID file.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol

from . import __version__, logs, times
from .config import Config, ConfigError
from .events import FlowEvent
from .flowtable import ENDED, FAILED, REJECTED, Change, FlowRecord, FlowTable, Plain
from .lifecycle import reap
from .logs import RateLimitedLog
from .metrics import Family, Metrics
from .persistence import Persistence
from .registry import Registry
from .service import PidFile, StartupError, notify_systemd

if TYPE_CHECKING:
    from .backends.ebpf import EbpfBackend
    from .backends.firefly import FireflyBackend
    from .backends.prometheus import PrometheusBackend
    from .rulefireflies import RuleFireflies
    from .rules import CompiledRules, Rule

__all__ = ["Daemon", "StartupError"]

log = logging.getLogger("flowlabel")

#: Seconds between checks that the marked interfaces are still the same devices.
INTERFACE_CHECK_INTERVAL = 2.0
#: The source name of the end events of flows that ended by themselves, and the reason for those
#: that belonged to a previous boot.
LIFECYCLE = "lifecycle"
PREVIOUS_BOOT = "previous_boot"
#: Rejected inputs logged per second; beyond that they are counted and summed up in one line.
REJECT_LOG_LIMIT = 50


class _Part(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Daemon:
    """The service; :meth:`run` returns when it has been stopped and has cleaned up."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.table = FlowTable()
        self.metrics = Metrics()
        self.registry: Registry | None = None
        #: The site rules, in order (``rules``, then those of plugins.iperf3 and plugins.perfsonar).
        self.rules: list[Rule] = []
        self._pid_file = PidFile(config.pid_path)
        self._persistence = Persistence(config.state_path, self.table, config.save_interval)
        self._rejects = RateLimitedLog(log, REJECT_LOG_LIMIT, "rejected inputs")
        self._sources: list[_Part] = []
        self._listeners: list[str] = []
        self._ebpf: EbpfBackend | None = None
        self._firefly: FireflyBackend | None = None
        self._rule_fireflies: RuleFireflies | None = None
        self._prometheus: PrometheusBackend | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping: asyncio.Event | None = None
        #: Set once every source serves (and cleared again when the daemon stops).
        self.ready: asyncio.Event | None = None
        self._started = time.monotonic()
        self._served = False
        self._ended_by_reason: dict[str, int] = {}
        # Flows of the last run that belong to a previous boot: ended once the backends run.
        self._previous_boot: list[FlowRecord] = []
        self._summarised: dict[tuple[str, str], int] = {}
        self.metrics.add_collector(self._families)

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT or :meth:`stop`, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        # SIGHUP too: a terminal that closes on a foreground daemon is a stop, not a kill.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._start()
            # What start-up made lives as long as the daemon: keep the collector off it.
            gc.freeze()
            log.info("flowlabel %s ready: %s", __version__, "; ".join(self._listeners))
            notify_systemd("READY=1")
            self._served = True
            self.ready.set()
            await self._stopping.wait()
            self.ready.clear()
            log.info("stopping")
            notify_systemd("STOPPING=1")
        finally:
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _start(self) -> None:
        cfg = self.config
        self._pid_file.write()
        try:
            os.makedirs(cfg.work_dir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create the work directory {cfg.work_dir}: {exc.strerror}") from None
        self.registry = self._load_registry()
        try:
            restored = self._persistence.restore()
        except OSError as exc:
            raise StartupError(f"cannot open the journal in {cfg.work_dir}: {exc.strerror}") from None
        if self._persistence.previous_boot:
            # Their connections died with the host: never marked again, ended once everything runs.
            self._previous_boot, restored = restored, []
            log.info("%d flows of the last run belong to a previous boot: they end", len(self._previous_boot))
        self._start_backends(restored)
        plugins = cfg.plugins
        if plugins.named_pipe is None and plugins.api is None and plugins.firefly is None:
            log.warning("no plugin configured: no flow events will arrive (add plugins.namedPipe, "
                        "plugins.api or plugins.firefly)")
        if plugins.named_pipe is not None:
            from .sources.pipe import PipeSource

            pipe = PipeSource(plugins.named_pipe.pipe_path, self, max_line=plugins.named_pipe.buff_size,
                              registry=self.registry)
            await self._start_part(pipe, "the named pipe")
            self._listeners.append(f"pipe {pipe.path}")
        if plugins.firefly is not None:
            from .relay import FireflyRelay
            from .sources.firefly import FireflySource
            from .udp import target_of

            ff = plugins.firefly
            relay = FireflyRelay(ff) if ff.firefly_receivers else None
            listener = FireflySource(ff, self, relay=relay)
            await self._start_part(listener, "the firefly listener")
            self.metrics.add_collector(listener.families)
            host = f"[{ff.bind_address}]" if ":" in ff.bind_address else ff.bind_address
            self._listeners.append(f"fireflies on udp {host}:{listener.port} "
                                   f"(receive buffer {listener.receive_buffer >> 20} MiB)")
            if relay is not None:
                try:
                    relay.start(target_of(ff.bind_address, listener.port))
                except ConfigError as exc:
                    raise StartupError(f"configuration: {exc}") from None
                self.metrics.add_collector(relay.families)
                self._listeners.append(f"relaying fireflies to {len(relay.targets)} receivers")
        if plugins.api is not None:
            from .sources.api import ApiSource

            api = ApiSource(plugins.api, self, registry=self.registry)
            await self._start_part(api, "the API")
            self.metrics.add_collector(api.server.families)
            where = [api.url] if plugins.api.bind_address is not None else []
            if plugins.api.unix_socket is not None:
                where.append(f"unix:{plugins.api.unix_socket}")
            self._listeners.append("api " + " and ".join(where))
        if self._prometheus is not None:
            await self._start_part(self._prometheus, "the metrics listener")
            self.metrics.add_collector(self._prometheus.server.families)
            self._listeners.append(f"metrics {self._prometheus.url}")
        self._background(self._persistence.save_periodically, "saving the state file")
        self._background(self._flush_logs_periodically, "the counts of unlogged warnings")
        firefly = self._firefly
        if firefly is not None and firefly.config.enrich:
            period = (cfg.enrichers.period if cfg.enrichers is not None else 1000) / 1000
            self._background(lambda: self._enrich_periodically(firefly, period), "the ongoing fireflies")
        if cfg.summary_interval > 0:
            self._background(self._summarise_periodically, "the summary")
        self._start_rule_fireflies()
        ebpf = self._ebpf
        if ebpf is not None:
            self._background(lambda: self._watch_interfaces(ebpf), "watching the interfaces")
            reaper = ebpf.reaper
            if reaper is not None:
                self._background(lambda: reap(reaper, self.end_flows), "ending flows that end by themselves")
        if self._previous_boot:
            self.end_flows([(record.key, PREVIOUS_BOOT) for record in self._previous_boot])
            self._previous_boot = []

    def _background(self, job: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``job`` until the daemon stops; restart it, after logging why, if it fails."""

        async def guarded() -> None:
            while True:
                try:
                    await job()
                except Exception:
                    log.exception("%s failed; starting it again", what)
                    await asyncio.sleep(1)

        self._tasks.append(asyncio.get_running_loop().create_task(guarded()))

    async def _start_part(self, part: _Part, what: str) -> None:
        try:
            await part.start()
        except OSError as exc:
            raise StartupError(f"cannot start {what}: {exc}") from None
        self._sources.append(part)

    def _site_rules(self) -> CompiledRules | None:
        """The configuration's site rules, checked and compiled for the classifier."""
        from .rules import compile_rules, from_config

        assert self.registry is not None
        try:
            rules = from_config(self.config, self.registry)
            if not rules:
                return None
            compiled = compile_rules(rules)
        except ConfigError as exc:
            raise StartupError(f"configuration: {exc}") from None
        self.rules = list(compiled.rules)
        self._listeners.append(f"{len(compiled.rules)} site rules")
        if self.config.backends.marker is None:
            log.warning("%d site rules, but no backends.marker: the rules mark nothing",
                        len(compiled.rules))
        return compiled

    def _start_rule_fireflies(self) -> None:
        from .flow import reversed_key
        from .rulefireflies import start_rule_fireflies

        table = self.table

        def announced(key: bytes) -> bool:
            return table.get_key(key) is not None or table.get_key(reversed_key(key)) is not None

        sender = start_rule_fireflies(self.rules, self._firefly, announced)
        if sender is not None:
            self._rule_fireflies = sender
            self.metrics.add_collector(sender.families)
            self._background(sender.run, "the fireflies of rule-matched connections")
            self._listeners.append("fireflies for rule-matched TCP connections")

    def _start_backends(self, restored: list[FlowRecord]) -> None:
        from .errors import MarkerError

        backends = self.config.backends
        compiled = self._site_rules()
        if backends.marker is not None:
            from .backends.ebpf import EbpfBackend

            self._ebpf = EbpfBackend(backends.marker, compiled)
            try:
                failed = set(self._ebpf.start(restored))
            except (MarkerError, ValueError) as exc:
                raise StartupError(f"cannot start marking: {exc}") from None
            restored = [r for r in restored if r.key not in failed]
            self._persistence.removed(failed)
            modes = self._ebpf.attachment_modes()
            self._listeners.append(
                "marking on " + ", ".join(f"{name} ({mode})" for name, mode in modes.items())
            )
            if self._ebpf.reaper is not None:
                self._listeners.append(f"TCP sockets: {self._ebpf.reaper.mode}")
        else:
            self._listeners.append("not marking (no ebpf backend)")
        added = self.table.restore(restored)
        self.table.restore(self._previous_boot)  # to be ended, as a record each
        self._persistence.restored()
        self._listeners.append(f"{added} flows restored")
        if backends.firefly is not None:
            from .backends.firefly import FireflyBackend

            self._firefly = FireflyBackend(backends.firefly)
            try:
                self._firefly.start()
            except ConfigError as exc:
                raise StartupError(f"configuration: {exc}") from None
            except (MarkerError, OSError) as exc:  # the ongoing round (enrich)
                raise StartupError(f"ongoing fireflies: {exc}") from None
            if self._firefly.collectors:
                self._listeners.append(f"fireflies to {len(self._firefly.collectors)} collectors")
        if backends.prometheus is not None:
            from .backends.prometheus import PrometheusBackend

            prom = backends.prometheus
            self._prometheus = PrometheusBackend(prom.bind_address, prom.bind_port, self.metrics)
            if prom.flow_metrics:
                from .flowmetrics import FlowMetrics

                self.metrics.add_collector(FlowMetrics(lambda: self.table, prom.max_flow_metrics).families)

    def _load_registry(self) -> Registry:
        from .registry import RegistryError

        cache = os.path.join(self.config.work_dir, "registry-cache.json")
        try:
            return Registry.load(self.config.registry, timeout=5.0, cache_path=cache)
        except RegistryError as exc:
            raise StartupError(f"cannot load the registry: {exc}") from None

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # Sources first: the pipe hands over what it buffered while the backends still run.
        for part in reversed(self._sources):
            try:
                await part.stop()
            except Exception:
                log.exception("stopping %s failed", type(part).__name__)
        self._sources.clear()
        logs.flush_all()
        self._persistence.close()
        if self._rule_fireflies is not None:
            self._rule_fireflies.stop()
            self._rule_fireflies = None
        for backend in (self._firefly, self._ebpf):
            if backend is not None:
                try:
                    backend.stop()
                except Exception:
                    log.exception("stopping the %s backend failed", backend.name)
        self._firefly = self._ebpf = None
        if self._served:
            self._log_summary(final=True)
        self._pid_file.remove()

    # -- events -----------------------------------------------------------------------------

    def submit(self, events: Sequence[FlowEvent], source: str) -> list[Change]:
        apply = self.table.apply
        changes = [apply(event, source) for event in events]
        # Journaled before the map is written: a kill in between may restore a flow
        # the map did not have yet, but never loses one it had.
        self._persistence.record(changes)
        if self._ebpf is not None:
            changes = self._mark(self._ebpf, changes)
        if self._firefly is not None:
            self._firefly.apply(changes)
        counts = self.metrics.events
        for change in changes:
            key = (source, change.outcome)
            counts[key] = counts.get(key, 0) + 1
        return changes

    def _mark(self, ebpf: EbpfBackend, changes: list[Change]) -> list[Change]:
        from .errors import MarkerError

        try:
            failed = set(ebpf.apply(changes))
        except MarkerError as exc:
            log.error("the classifier's map could not be updated: %s", exc)
            failed = {c.record.key for c in changes if c.relabel and c.outcome != ENDED and c.record}
        if not failed:
            return changes
        for key in failed:
            self.table.discard(key)
        self._persistence.removed(failed)
        return [self._failed(c, failed) for c in changes]

    @staticmethod
    def _failed(change: Change, failed: set[bytes]) -> Change:
        if change.record is not None and change.outcome != ENDED and change.record.key in failed:
            return change._replace(outcome=FAILED, relabel=False)
        return change

    def end_flows(self, ended: Sequence[tuple[bytes, str]]) -> None:
        """End flows (packed keys) that ended by themselves (lifecycle.py), as their end events would."""
        if not ended:
            return
        now = times.now()
        events = []
        for key, reason in ended:
            record = self.table.get_key(key)
            if record is None:
                continue
            flow = record.flow
            events.append(FlowEvent("end", flow.protocol, flow.src, flow.dst, flow.sport, flow.dport,
                                    record.experiment, record.activity, record.start_time, now,
                                    record.application))
            self._ended_by_reason[reason] = self._ended_by_reason.get(reason, 0) + 1
            log.debug("%s ended by itself: %s", flow, reason)
        self.submit(events, LIFECYCLE)

    def reject(self, source: str, reason: str) -> None:
        self.metrics.count(source, REJECTED)
        self._rejects.warning("rejected %s input: %s", source, reason)

    # -- views for the API ------------------------------------------------------------------

    def flow_rows(self) -> list[Plain]:
        """Every flow as plain values: a listing of all of them need not make a record of each."""
        return self.table.plain()

    def rule_list(self) -> list[dict[str, Any]]:
        """The site rules, each with the packets it decided so far."""
        hits = self._ebpf.rule_hits() if self._ebpf is not None else [0] * len(self.rules)
        return [{"rule": rule.where, "description": rule.describe(),
                 "ids": [list(pair) for pair in rule.ids], "fireflies": rule.fireflies, "packets": count}
                for rule, count in zip(self.rules, hits)]

    def health(self) -> dict[str, Any]:
        return {
            "uptime_seconds": round(time.monotonic() - self._started, 3),
            "active_flows": len(self.table),
            "interfaces": self._ebpf.interfaces if self._ebpf is not None else [],
            "events": self.metrics.total(),
            "rejected": self.metrics.total(REJECTED),
        }

    def metrics_text(self) -> str:
        return self.metrics.render()

    def _families(self) -> list[Family]:
        families = [
            Family.single("flowlabel_active_flows", "gauge", "Flows being marked", len(self.table)),
            Family("flowlabel_flows_ended_total", "counter",
                   "Flows that ended by themselves, by reason (no end event came)",
                   [((("reason", reason),), n) for reason, n in sorted(self._ended_by_reason.items())]),
            *self._persistence.families(),
        ]
        for backend in (self._ebpf, self._firefly):
            if backend is not None:
                families.extend(backend.families())
        return families

    # -- watching and summing up ------------------------------------------------------------

    async def _watch_interfaces(self, ebpf: EbpfBackend) -> None:
        while True:
            await asyncio.sleep(INTERFACE_CHECK_INTERVAL)
            ebpf.check_interfaces()

    async def _enrich_periodically(self, firefly: FireflyBackend, period: float) -> None:
        next_due = time.monotonic()
        while True:
            next_due += period
            now = time.monotonic()
            if next_due < now:  # a period or more late (a busy host): the rounds missed are skipped
                next_due = now
            await asyncio.sleep(next_due - now)
            for _ in firefly.ongoing_steps(self.table):
                await asyncio.sleep(0)  # events and requests go in between the steps

    async def _flush_logs_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            logs.flush_all()

    async def _summarise_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.summary_interval)
            if self.metrics.events != self._summarised:
                self._log_summary()

    def _log_summary(self, *, final: bool = False) -> None:
        events = self.metrics.events
        by_outcome: dict[str, int] = {}
        for (_, outcome), n in events.items():
            by_outcome[outcome] = by_outcome.get(outcome, 0) + n
        detail = ", ".join(f"{n} {outcome}" for outcome, n in sorted(by_outcome.items()))
        log.info(
            "%s%d events%s; %d active flows",
            "final summary: " if final else "summary: ",
            sum(by_outcome.values()),
            f" ({detail})" if detail else "",
            len(self.table),
        )
        self._summarised = dict(events)
