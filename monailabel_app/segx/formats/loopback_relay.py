"""Run inside a network namespace of its own (``unshare -n``): bring up the namespace's
loopback, start a server (argv after the first two arguments) that listens on
``127.0.0.1:INNER_PORT`` there, and relay every connection accepted on an inherited
listening socket (file descriptor ``FD``, bound by the parent on the *host's*
127.0.0.1; a socket keeps the namespace it was made in) to that server.

    python -I loopback_relay.py FD INNER_PORT SERVER_ARGV...

Why: Orthanc 1.10 (Debian bookworm) binds every interface whatever ``RemoteAccessAllowed``
says (a bind address, ``HttpBindAddresses``, came to Orthanc only in 2025). In its own
namespace its only interface is a loopback nobody else shares, and the one door in is
the parent's socket on 127.0.0.1. Standard library only: it runs with ``python -I``.
"""

import ctypes
import fcntl
import signal
import socket
import struct
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
CHUNK = 1 << 16


def loopback_up() -> None:
    """``ip link set lo up``, by ioctl (no iproute2 needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack_from("H", fcntl.ioctl(s, SIOCGIFFLAGS, request), 16)[0]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until ``source`` closes, then half-close ``target``."""
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(client: socket.socket, port: int) -> None:
    try:
        server = socket.create_connection(("127.0.0.1", port))
    except OSError:  # the server is not up yet: the client sees a closed connection
        client.close()
        return
    upstream = threading.Thread(target=pump, args=(client, server), daemon=True)
    upstream.start()
    pump(server, client)
    upstream.join()
    client.close()
    server.close()


def main(fd: int, port: int, argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # the parent dies: so do we
    loopback_up()
    server = subprocess.Popen(argv, preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    listener = socket.socket(fileno=fd)

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=relay, args=(client, port), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
