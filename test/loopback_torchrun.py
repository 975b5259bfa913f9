"""``torchrun`` whose every listening socket is on 127.0.0.1, for tests (``python test/loopback_torchrun.py ARGS``).

torchrun's TCP stores listen on all interfaces whatever address they are given (torch 2.14: the agent's
rendezvous store and the store it shares with the workers open their own wildcard listener; there is no option or
environment variable for the bind address). Here the rendezvous state lives in a file store (no socket), and the
store shared with the workers is served from a socket this module binds to 127.0.0.1 itself and hands over as
``master_listen_fd`` (legacy, non-libuv store backend: libuv does not take a listen fd). The workers are clients of
that store; gloo is told to use the loopback interface. ARGS are torchrun's, less the rendezvous options.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler
from torch.distributed.run import main as torchrun_main

LOOPBACK = "127.0.0.1"
BACKEND_NAME = "loopback-file"


def loopback_store_server(port: int = 0) -> dist.TCPStore:
    """A TCP store server that listens on 127.0.0.1 only."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, port))
    listener.listen()
    bound_port = listener.getsockname()[1]
    return dist.TCPStore(LOOPBACK, bound_port, is_master=True, multi_tenant=True, wait_for_workers=False,
                         master_listen_fd=listener.detach(), use_libuv=False)


class LoopbackRendezvousHandler(DynamicRendezvousHandler):
    """torchrun's dynamic rendezvous, serving the store shared with the workers on 127.0.0.1 only."""

    def _create_tcp_store_server(self, master_addr: str, master_port: int) -> dist.TCPStore:
        return loopback_store_server(master_port)

    def get_backend(self) -> str:
        return BACKEND_NAME


def create_loopback_handler(params: RendezvousParameters) -> LoopbackRendezvousHandler:
    backend, store = create_backend(params)
    return LoopbackRendezvousHandler.from_backend(params.run_id, store, backend, params.min_nodes,
                                                  params.max_nodes, LOOPBACK)


def main(argv: list[str]) -> None:
    rendezvous_handler_registry.register(BACKEND_NAME, create_loopback_handler)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    with tempfile.TemporaryDirectory(prefix="rdzv-") as tmp:
        torchrun_main(["--rdzv-backend", BACKEND_NAME, "--rdzv-endpoint", str(Path(tmp) / "store"),
                       "--rdzv-conf", "store_type=file", "--local-addr", LOOPBACK, "--nnodes", "1", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
