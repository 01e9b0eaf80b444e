"""Free TCP ports and a node's address. Nothing heavy is imported here: a Ray task that only asks a node for an
address (`node_address`) then starts in a fraction of a second instead of importing torch and the model code
(measured: 12 s of CPU in a tiny training run, most of what a start-up on 2 cores can spare)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000  # above Ray's default worker ports (10002-19999)


def free_port(host: str = "") -> int:
    """A TCP port that was free a moment ago on this machine (e.g. a rank-0 rendezvous port).

    Drawn at random above Ray's worker ports (10002-19999) and below the kernel's ephemeral range (32768+ on
    Linux): a port the kernel hands out (``bind(0)``) can be given to another process's outgoing connection
    before the rendezvous binds it (seen in CI as EADDRINUSE); outside that range only an explicit bind takes it.
    """
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    top = int(ephemeral.read_text().split()[0]) if ephemeral.is_file() else 32768
    rng = random.SystemRandom()
    for _ in range(64 if top > _LOW else 0):
        port = rng.randrange(_LOW, top)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node_address() -> tuple[str, int]:
    """(this node's IP as Ray knows it, a free port on it): run as a Ray task placed on the node in question."""
    import ray

    return ray.util.get_node_ip_address(), free_port()
