"""One relay worker's configuration, built once by ``run_relay`` (shell, sync and core share it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet import keys
from fleet.addresses import Addr
from relays.demux import DEFAULT_MAX_QUEUE_AGE, DemuxConfig
from relays.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS
from relays.tcpmux import TcpLimits


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything one relay worker needs; built once by ``run_relay``."""

    shard: int
    public: Addr  # bound; may be 0.0.0.0 in a pod or behind NAT
    internal: Addr  # bound
    redis_url: str
    keyring: Mapping[int, bytes]
    worker: int = 0
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_flows: int = DEFAULT_MAX_FLOWS
    heartbeat_interval: float = 1.0
    heartbeat_ttl: float = 5.0
    registry_interval: float = 1.0  # poll of the ``edge:transceivers`` hash
    flow_write_interval: float = 0.05  # batch of learned-flow writes
    flow_refresh_interval: float = keys.FLOW_TTL / 4
    expire_interval: float = 5.0
    max_lookups: int = 64  # clients with a Redis flow lookup in flight
    negative_ttl: float = 3.0  # seconds a Redis miss is remembered
    redis_timeout: float = 1.0
    socket_buffer: int = 4 * 1024 * 1024
    drain_grace: float = 600.0  # seconds a drained relay waits for its flows to go quiet
    drain_idle: float = 3.0  # seconds without a packet on any flow: its calls have ended
    max_flows_per_ufrag: int = 8  # sources learned per server ufrag
    learn_rate: float = 200.0  # flows learned from STUN per second, per worker ...
    learn_burst: float = 400.0  # ... and at once
    max_queue_age: float = DEFAULT_MAX_QUEUE_AGE  # seconds in a socket before it is stale
    admin: Addr | None = None  # HOST:PORT of /livez, /readyz, /metrics (worker 0 only)
    advertise: Addr | None = None  # the public candidate answers carry; None: the bound one
    internal_advertise: Addr | None = None  # the internal address published; None: bound one
    fastpath: bool = True  # the C recvmmsg/sendmmsg path where built (False: pure Python)
    tcp: Addr | None = None  # the ICE-TCP listener (RFC 6544 passive); None: UDP only
    tcp_limits: TcpLimits = TcpLimits()

    def demux_config(self) -> DemuxConfig:
        return DemuxConfig(
            shard=self.shard, keyring=self.keyring, max_flows=self.max_flows,
            idle_timeout=self.idle_timeout, max_lookups=self.max_lookups,
            negative_ttl=self.negative_ttl, drain_grace=self.drain_grace,
            drain_idle=self.drain_idle, max_flows_per_ufrag=self.max_flows_per_ufrag,
            learn_rate=self.learn_rate, learn_burst=self.learn_burst,
            max_queue_age=self.max_queue_age, worker=self.worker, tcp=self.tcp_limits,
        )
