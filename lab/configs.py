"""Configuration text the lab hands to real programs: nftables, HAProxy, the fleet's Secret and
the GeoIP records (pure functions of the plan)."""

from __future__ import annotations

from dataclasses import dataclass

from lab.plan import (
    BACKBONE,
    LB_PORT,
    POSTGRES_PORT,
    REDIS_PORT,
    SIGNALING_PORT,
    Plan,
    Role,
    private_address,
    public_address,
)

DB_NAME = "edge"
DB_USER = "edge"
FAULT_TABLE = "lab_fault"  # nftables table of injected faults


@dataclass(frozen=True, slots=True)
class Secrets:
    secret_key: str
    ufrag_keys: str  # "kid:secret"
    db_password: str


def nat_ruleset(public_if: str = "eth0", ports: str | None = None) -> str:
    """Source NAT for a client LAN: every connection leaving ``public_if`` is masqueraded (to
    source ports ``ports``, "LOW-HIGH", when given)."""
    ranged = f'    oifname "{public_if}" meta l4proto {{ tcp, udp }} masquerade to :{ports}\n'
    return (
        "table ip lab_nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        + (ranged if ports else "")
        + f'    oifname "{public_if}" masquerade\n'
        "  }\n"
        "}\n"
    )


def load_balancer_ruleset(public: str, pod: str, port: int) -> str:
    """A relay host's public address as the LoadBalancer Service (``externalTrafficPolicy:
    Local``) in front of its pod: UDP to ``public:port`` DNATed to the pod's address with the
    caller's source kept, and replies leaving from ``public`` (conntrack), as kube-proxy does."""
    return (
        "table ip lab_lb {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {public} udp dport {port} dnat to {pod}:{port}\n"
        "  }\n"
        "}\n"
    )


def block_ruleset(address: str, port: int) -> str:
    """A host's own TCP traffic to ``address:port`` dropped (silently, as a cut link would)."""
    return (
        f"table ip {FAULT_TABLE} {{\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f"    ip daddr {address} tcp dport {port} drop\n"
        "  }\n"
        "}\n"
    )


# HAProxy sends HTTP/1 header names in lower case (legal: RFC 9110 section 5.1), but
# whip.client looks them up case-sensitively; restore the case it expects.
CASE_ADJUST = ("Location", "ETag", "X-Region", "X-Region-Reason", "X-Relay-Shard",
               "X-Transceiver", "Content-Type", "Retry-After")


def wan_filter_ruleset(plan: Plan) -> str:
    """The WAN router forwards nothing from the callers' networks into the private backbone:
    clients reach only public addresses (the LB and the relays), as on the internet."""
    callers = ", ".join(site.network for site in plan.clients)
    return (
        "table ip lab_filter {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    ip saddr {{ {callers} }} ip daddr {BACKBONE} drop\n"
        "  }\n"
        "}\n"
    )


def haproxy_config(plan: Plan) -> str:
    """HTTP load balancer on the LB's public address, round robin over the signaling hosts,
    health-checked on /healthz, adding X-Forwarded-For, redispatching refused connections."""
    public = public_address(plan, "lb")
    servers = "".join(
        f"    server {h.name} {private_address(plan, h.name)}:{SIGNALING_PORT} check inter 1s\n"
        for h in plan.by_role(Role.SIGNALING)
    )
    return (
        "global\n    maxconn 2000\n"
        + "".join(f"    h1-case-adjust {h.lower()} {h}\n" for h in CASE_ADJUST) + "\n"
        "defaults\n    mode http\n    option forwardfor\n    timeout connect 2s\n"
        "    timeout client 60s\n    timeout server 60s\n    retries 2\n\n"
        f"frontend edge\n    bind {public}:{LB_PORT}\n    option h1-case-adjust-bogus-client\n"
        "    default_backend signaling\n\n"
        # a refused connection (a dead signaling host not yet marked down) is retried at
        # once on the next server instead of the same one after a turn-around second
        "backend signaling\n    balance roundrobin\n    option redispatch 1\n"
        "    option httpchk\n"
        f"    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {public}\n"
        f"{servers}"
    )


def database_url(plan: Plan, secrets: Secrets) -> str:
    core = private_address(plan, "core")
    return f"postgres://{DB_USER}:{secrets.db_password}@{core}:{POSTGRES_PORT}/{DB_NAME}"


def redis_url(plan: Plan) -> str:
    return f"redis://{private_address(plan, 'core')}:{REDIS_PORT}/0"


def secret_data(plan: Plan, secrets: Secrets) -> dict[str, str]:
    """The lab's Secret ``edge-secrets``: the same SECRET_KEY / UFRAG_KEYS across the fleet,
    PostgreSQL and Redis on ``core``."""
    return {
        "SECRET_KEY": secrets.secret_key,
        "UFRAG_KEYS": secrets.ufrag_keys,
        "DATABASE_URL": database_url(plan, secrets),
        "REDIS_URL": redis_url(plan),
    }


@dataclass(frozen=True, slots=True)
class GeoRecord:
    network: str
    latitude: float
    longitude: float
    country: str
    city: str


def geo_records(plan: Plan) -> tuple[GeoRecord, ...]:
    """Each client continent's NAT prefix, placed at its site's city."""
    return tuple(GeoRecord(s.network, s.latitude, s.longitude, s.country, s.city)
                 for s in plan.clients)
