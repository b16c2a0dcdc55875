"""Cluster options of `run`: one process, a local cluster (--processes) or one across machines."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

from pipeline.cli.common import UsageError
from pipeline.cli.signals import FOLLOWERS


def cluster_of(args: argparse.Namespace) -> tuple[list[str] | None, int]:
    """(addresses, process id) of a cluster run, or (None, 0) for one process."""
    if args.processes < 1:
        raise UsageError(f"--processes must be >= 1, got {args.processes}")
    if args.addresses is not None or args.process_id is not None:
        return _joined(args)
    if args.processes == 1:
        return None, 0
    return [f"127.0.0.1:{p}" for p in _free_ports(args.processes)], 0


def _joined(args: argparse.Namespace) -> tuple[list[str], int]:
    """--addresses and --process-id, checked."""
    if args.processes > 1:
        raise UsageError("--processes starts a cluster on this machine; --addresses joins one: "
                         "give one or the other")
    if args.addresses is None or args.process_id is None:
        raise UsageError("--addresses and --process-id go together")
    addresses = [a.strip() for a in args.addresses.split(";") if a.strip()]
    for a in addresses:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--addresses: {a!r} is not HOST:PORT")
    if not 0 <= args.process_id < len(addresses):
        raise UsageError(f"--process-id must be 0..{len(addresses) - 1}, got {args.process_id}")
    return addresses, args.process_id


def _free_ports(n: int) -> list[int]:
    """`n` unused ports on 127.0.0.1, for the cluster's own connections."""
    ports = []
    for _ in range(n):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return ports


def start_followers(argv: list[str], addresses: list[str] | None) -> list[subprocess.Popen[bytes]]:
    """Processes 1..N-1 of a local cluster: the same command, joined by address."""
    assert addresses is not None
    joined = ";".join(addresses)
    rest: list[str] = []
    skip = False
    for arg in argv:  # drop --processes N (and --processes=N) so followers do not start more
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        rest.append(arg)
    FOLLOWERS[:] = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", *rest, "--addresses", joined,
                                      "--process-id", str(i)])
                    for i in range(1, len(addresses))]
    return list(FOLLOWERS)


def stop_followers(followers: list[subprocess.Popen[bytes]], grace_s: float = 5.0) -> int:
    """Wait for followers to end (they end with the dataflow); 1 if any failed."""
    code = 0
    for proc in followers:
        try:
            rc = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                rc = proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc not in (0, -signal.SIGTERM, 130):
            code = 1
    return code
