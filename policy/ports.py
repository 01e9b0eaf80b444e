"""Free TCP ports and a node's address. Nothing heavy is imported here: a Ray task that only asks a node for an
address (`node_address`) then starts in a fraction of a second instead of importing torch and the model code
(measured: 12 s of CPU in a tiny training run, most of what a start-up on 2 cores can spare)."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A TCP port that was free a moment ago on this machine (e.g. a rank-0 rendezvous port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def node_address() -> tuple[str, int]:
    """(this node's IP as Ray knows it, a free port on it): run as a Ray task placed on the node in question."""
    import ray

    return ray.util.get_node_ip_address(), free_port()
