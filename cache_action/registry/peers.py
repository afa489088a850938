"""Which peers count as "this machine" for a registry that has no credentials.

On the host that is loopback only. In a container on a Docker network, the host itself reaches
the registry from that network (a port published on the host's 127.0.0.1 arrives from the
network's gateway, measured with docker-proxy), and so do the containers a job put on it (a
GitHub job network): the subnets behind the container's veth interfaces are local too. A
container on the host network has no veth interface (its interfaces are the host's), so there
nothing but loopback is local; neither is a LAN or the internet behind a published port: those
peers keep their own addresses.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SYS_CLASS_NET = Path("/sys/class/net")
PROC_NET_ROUTE = Path("/proc/net/route")


def _veth_interfaces(sys_class_net: Path) -> set[str]:
    """A veth's `iflink` names its peer's index, not its own; a NIC or a bridge links itself."""
    found = set()
    for interface in sys_class_net.glob("*"):
        try:
            index = (interface / "ifindex").read_text().strip()
            link = (interface / "iflink").read_text().strip()
        except OSError:
            continue
        if index != link:
            found.add(interface.name)
    return found


def _attached_subnets(route_table: str) -> Iterable[tuple[str, Network]]:
    """(interface, subnet) of each directly attached IPv4 route in /proc/net/route."""
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[2] != "00000000" or fields[1] == "00000000":
            continue  # a route through a gateway, or the default route
        try:
            destination = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            yield fields[0], ipaddress.ip_network(f"{destination}/{mask}", strict=False)
        except ValueError:
            continue


def docker_networks(
    sys_class_net: Path = SYS_CLASS_NET, route_file: Path = PROC_NET_ROUTE
) -> tuple[Network, ...]:
    """The subnets of the Docker networks this process's container is attached to; empty on a
    host or on the host network."""
    veths = _veth_interfaces(sys_class_net)
    if not veths:
        return ()
    try:
        table = route_file.read_text()
    except OSError:
        return ()
    return tuple(subnet for interface, subnet in _attached_subnets(table) if interface in veths)


def is_local(peer: str | None, networks: Iterable[Network]) -> bool:
    """Loopback, or an address on one of `networks` (IPv4-mapped IPv6 peers included)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or any(address in network for network in networks)
