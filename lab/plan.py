"""The lab's address plan, hosts and WAN delay matrix (pure: no I/O, no clock).

One WAN router namespace holds a bridge per segment (each site's public and private
network) and routes between them; inter-site public traffic detours through its TUN delay
line. Clients sit behind NAT routers on the continents' public segments.

```
 client-eu ─ nat-eu ─┐                     ┌─ lb ─ (bl-dc) ─ sig-1, sig-2, core, worker
 client-na ─ nat-na ─┼── wan (bridges, dl0) ┼─ relay-eu-west ─ (bl-eu-west) ─ tx-eu-west-1, -2
 client-asia ─ nat ──┘                     └─ relay-us-east, relay-ap-south (same shape)
```
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "vel-"  # every namespace the lab makes starts with this (down sweeps by it)
WAN = "wan"
TUN = "dl0"
DELAY_TABLE = 100  # policy-routing table sending forwarded public traffic into the TUN
RELAY_PUBLIC_PORT = 3478
RELAY_INTERNAL_PORT = 4478
TRANSCEIVER_PORT = 5001
SIGNALING_PORT = 8000
LB_PORT = 80
POSTGRES_PORT = 5432
REDIS_PORT = 6379
TRANSCEIVERS_PER_REGION = 2
BACKBONE = "10.0.0.0/8"  # private traffic between sites: routed, never delayed
SAME_CONTINENT_MS = 5.0
ONE_WAY_MS: dict[frozenset[str], float] = {
    frozenset({"eu", "na"}): 40.0,
    frozenset({"eu", "asia"}): 60.0,
    frozenset({"na", "asia"}): 90.0,
}
DC_CONTINENT = "eu"  # where core, signaling and the load balancer live


class Role(StrEnum):
    CLIENT = "client"
    RELAY = "relay"
    TRANSCEIVER = "transceiver"
    SIGNALING = "signaling"
    LB = "lb"
    CORE = "core"
    ROUTER = "router"
    WORKER = "worker"


@dataclass(frozen=True, slots=True)
class RegionSite:
    code: str
    name: str
    latitude: float
    longitude: float
    continent: str
    index: int  # 1..: picks the region's networks, relay shard and transceiver ids (overlays')
    is_default: bool = False

    @property
    def shard(self) -> int:
        return self.index

    def transceiver_ids(self) -> tuple[int, ...]:
        """The overlay's TRANSCEIVER_ID_BASE (100 x index) plus each pod's ordinal."""
        first = 100 * self.index
        return tuple(range(first, first + TRANSCEIVERS_PER_REGION))


@dataclass(frozen=True, slots=True)
class ClientSite:
    """A continent's callers: a NAT router whose public /24 the lab's GeoIP DB places here.

    The prefixes are public (``is_global``) because the locator ignores documentation ranges;
    they exist only inside the lab's namespaces, which have no path to the real internet.
    """

    continent: str
    network: str
    latitude: float
    longitude: float
    country: str
    city: str


REGIONS = (  # the regions of topologies/three-regions.json
    RegionSite("eu-west", "Dublin", 53.35, -6.26, "eu", 1, is_default=True),
    RegionSite("us-east", "Virginia", 38.95, -77.45, "na", 2),
    RegionSite("ap-south", "Mumbai", 19.08, 72.88, "asia", 3),
)
CLIENT_SITES = (
    ClientSite("eu", "81.2.69.0/24", 48.8566, 2.3522, "FR", "Paris"),
    ClientSite("na", "216.160.83.0/24", 41.8781, -87.6298, "US", "Chicago"),
    ClientSite("asia", "49.36.0.0/24", 1.3521, 103.8198, "SG", "Singapore"),
)


@dataclass(frozen=True, slots=True)
class Segment:
    """A bridge in the WAN namespace; its first address is the gateway of the hosts on it."""

    name: str
    network: str
    continent: str

    def address(self, host: int) -> str:
        return str(ipaddress.ip_network(self.network)[host])

    @property
    def gateway(self) -> str:
        return self.address(1)

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.network).prefixlen


@dataclass(frozen=True, slots=True)
class Veth:
    """A veth pair: ``ifname`` in the host's namespace, ``peer`` in ``peer_ns`` (on ``bridge``)."""

    netns: str
    ifname: str
    address: str  # "a.b.c.d/len"
    peer_ns: str
    peer: str
    bridge: str | None = None
    peer_address: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    netns: str
    destination: str  # "default" or a CIDR
    via: str


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    role: Role
    addresses: tuple[str, ...]
    continent: str | None = None
    expected_region: str | None = None
    region: str | None = None

    @property
    def netns(self) -> str:
        return PREFIX + self.name


@dataclass(frozen=True, slots=True)
class Plan:
    hosts: tuple[Host, ...]
    segments: tuple[Segment, ...]
    veths: tuple[Veth, ...]
    routes: tuple[Route, ...]
    regions: tuple[RegionSite, ...]
    clients: tuple[ClientSite, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise ValueError(f"no host {name!r}")

    def by_role(self, role: Role) -> tuple[Host, ...]:
        return tuple(host for host in self.hosts if host.role is role)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(host.netns for host in self.hosts)


def one_way_ms(a: str, b: str) -> float:
    """Configured one-way WAN delay between two continents, in milliseconds."""
    if a == b:
        return SAME_CONTINENT_MS
    try:
        return ONE_WAY_MS[frozenset({a, b})]
    except KeyError:
        raise ValueError(f"no delay between {a!r} and {b!r}") from None


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a 6371 km sphere."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def nearest_region(site: ClientSite, regions: tuple[RegionSite, ...] = REGIONS) -> RegionSite:
    return min(regions, key=lambda r: great_circle_km(
        site.latitude, site.longitude, r.latitude, r.longitude))


def regions_by_distance(site: ClientSite, regions: tuple[RegionSite, ...] = REGIONS
                        ) -> tuple[RegionSite, ...]:
    """Regions nearest first, as signaling ranks them for an unloaded fleet."""
    return tuple(sorted(regions, key=lambda r: great_circle_km(
        site.latitude, site.longitude, r.latitude, r.longitude)))


@dataclass
class _Builder:
    """Accumulates hosts, segments, veths and routes while ``build_plan`` walks the sites."""

    hosts: list[Host]
    segments: list[Segment]
    veths: list[Veth]
    routes: list[Route]

    def segment(self, name: str, network: str, continent: str) -> Segment:
        segment = Segment(name, network, continent)
        self.segments.append(segment)
        return segment

    def attach(self, host: str, ifname: str, segment: Segment, index: int) -> str:
        """Plug ``host`` into ``segment``'s bridge at host number ``index``; return its IP."""
        address = segment.address(index)
        peer = f"w{len(self.veths)}"
        self.veths.append(Veth(PREFIX + host, ifname, f"{address}/{segment.prefixlen}",
                               PREFIX + WAN, peer, bridge=segment.name))
        return address

    def route(self, host: str, destination: str, via: str) -> None:
        self.routes.append(Route(PREFIX + host, destination, via))

    def add(self, host: Host) -> None:
        self.hosts.append(host)


def _dc(b: _Builder) -> None:
    private = b.segment("bl-dc", "10.0.0.0/24", DC_CONTINENT)
    public = b.segment("bp-dc", "198.18.0.0/24", DC_CONTINENT)
    lb_public = b.attach("lb", "eth0", public, 10)
    lb_private = b.attach("lb", "eth1", private, 2)
    b.route("lb", "default", public.gateway)
    b.route("lb", BACKBONE, private.gateway)
    b.add(Host("lb", Role.LB, (lb_public, lb_private)))
    for name, role, index in (("core", Role.CORE, 10), ("worker", Role.WORKER, 11),
                              ("sig-1", Role.SIGNALING, 21), ("sig-2", Role.SIGNALING, 22)):
        address = b.attach(name, "eth0", private, index)
        b.route(name, "default", private.gateway)
        b.add(Host(name, role, (address,)))


def _region(b: _Builder, region: RegionSite) -> None:
    private = b.segment(f"bl-{region.code}", f"10.{region.index}.0.0/24", region.continent)
    public = b.segment(f"bp-{region.code}", f"198.18.{region.index}.0/24", region.continent)
    relay = f"relay-{region.code}"
    addresses = (b.attach(relay, "eth0", public, 10), b.attach(relay, "eth1", private, 10))
    b.route(relay, "default", public.gateway)
    b.route(relay, BACKBONE, private.gateway)
    b.add(Host(relay, Role.RELAY, addresses, continent=region.continent, region=region.code))
    for number, _xid in enumerate(region.transceiver_ids(), start=1):
        name = f"tx-{region.code}-{number}"
        address = b.attach(name, "eth0", private, 20 + number)
        b.route(name, "default", private.gateway)
        b.add(Host(name, Role.TRANSCEIVER, (address,), continent=region.continent,
                   region=region.code))


def _client(b: _Builder, site: ClientSite, regions: tuple[RegionSite, ...]) -> None:
    public = b.segment(f"bp-{site.continent}", site.network, site.continent)
    nat, client = f"nat-{site.continent}", f"client-{site.continent}"
    nat_public = b.attach(nat, "eth0", public, 2)
    b.route(nat, "default", public.gateway)
    b.veths.append(Veth(PREFIX + client, "eth0", "192.168.1.10/24", PREFIX + nat, "eth1",
                        peer_address="192.168.1.1/24"))
    b.route(client, "default", "192.168.1.1")
    b.add(Host(nat, Role.ROUTER, (nat_public, "192.168.1.1"), continent=site.continent))
    b.add(Host(client, Role.CLIENT, ("192.168.1.10",), continent=site.continent,
               expected_region=nearest_region(site, regions).code))


def build_plan(regions: tuple[RegionSite, ...] = REGIONS,
               clients: tuple[ClientSite, ...] = CLIENT_SITES) -> Plan:
    """Every host, bridge, veth and route of the lab."""
    b = _Builder([Host(WAN, Role.ROUTER, ())], [], [], [])
    _dc(b)
    for region in regions:
        _region(b, region)
    for site in clients:
        _client(b, site, regions)
    wan = b.hosts[0]
    b.hosts[0] = Host(wan.name, wan.role, tuple(s.gateway for s in b.segments))
    return Plan(tuple(b.hosts), tuple(b.segments), tuple(b.veths), tuple(b.routes),
                regions, clients)


def public_address(plan: Plan, host: str) -> str:
    """The host's address on a public (``bp-``) segment: a relay's or the LB's."""
    return plan.host(host).addresses[0]


def private_address(plan: Plan, host: str) -> str:
    """The host's address on the backbone (10/8)."""
    for address in plan.host(host).addresses:
        if ipaddress.ip_address(address) in ipaddress.ip_network(BACKBONE):
            return address
    raise ValueError(f"{host} has no backbone address")


def delays_ms(plan: Plan) -> dict[str, dict[str, float]]:
    """One-way delay from each client continent to each region (lab.json ``delays_ms``)."""
    return {site.continent: {r.code: one_way_ms(site.continent, r.continent)
                             for r in plan.regions} for site in plan.clients}


def signaling_url(plan: Plan) -> str:
    return f"http://{public_address(plan, 'lb')}:{LB_PORT}"


def lab_json(plan: Plan) -> dict[str, object]:
    """The contract file ``var/lab/lab.json`` for tools outside the project."""
    hosts = []
    for host in plan.hosts:
        entry: dict[str, object] = {"name": host.name, "netns": host.netns,
                                    "role": str(host.role), "addresses": list(host.addresses)}
        if host.continent is not None:
            entry["continent"] = host.continent
        if host.expected_region is not None:
            entry["expected_region"] = host.expected_region
        if host.region is not None:
            entry["region"] = host.region
        hosts.append(entry)
    relays = {r.code: {"shard": r.shard, "public": f"{public_address(plan, 'relay-' + r.code)}"
                       f":{RELAY_PUBLIC_PORT}"} for r in plan.regions}
    return {"signaling_url": signaling_url(plan), "regions": [r.code for r in plan.regions],
            "delays_ms": delays_ms(plan), "relays": relays, "hosts": hosts}


def continents(plan: Plan) -> tuple[str, ...]:
    seen = dict.fromkeys(s.continent for s in plan.segments)
    return tuple(seen)


def delay_config_json(plan: Plan, loss: float = 0.0) -> dict[str, object]:
    """The delay line's configuration (``lab.delay.parse_delay_config`` reads it)."""
    names = continents(plan)
    pairs = [[a, b, one_way_ms(a, b)] for i, a in enumerate(names) for b in names[i:]]
    sites = [[s.network, s.continent] for s in plan.segments]
    return {"sites": sites, "one_way_ms": pairs, "loss": loss}
