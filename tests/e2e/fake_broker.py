"""A scripted stand-in for a broker, for tests about the relay rather than about Kafka: it
decides exactly when it answers and when it sends its FIN, which tansu does not let a test
choose. Each accepted connection runs `handler(sock)` on its own thread."""
import socket
import struct
import threading

import kafka_raw as kr


def read_frame(sock):
    """One size-prefixed frame (without the prefix), or None at EOF."""
    head = _exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">i", head)
    return _exact(sock, n)


def _exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def correlation_id(request_frame):
    """A request frame's correlation id (after api key and version)."""
    return struct.unpack(">i", request_frame[4:8])[0]


def api_versions_v0_response(corr, keys=((18, 0, 3), (3, 1, 12))):
    """An ApiVersions v0 answer (response header v0): no error, `keys` as (key, min, max)."""
    body = kr.i32(corr) + kr.i16(0) + kr.i32(len(keys))
    for k, lo, hi in keys:
        body += kr.i16(k) + kr.i16(lo) + kr.i16(hi)
    return kr.i32(len(body)) + body


def answer_each(sock, keys=((18, 0, 3), (3, 1, 12))):
    """Answer every request with an ApiVersions v0 response carrying its correlation id, until
    the client's EOF."""
    while (frame := read_frame(sock)) is not None:
        sock.sendall(api_versions_v0_response(correlation_id(frame), keys))


# API keys no Kafka has, so the filter's clamp leaves them alone: 11,000 of them make an
# ApiVersions answer of about 64 KiB, a read that fills a 64 KiB read buffer.
MANY_KEYS = tuple((k, 0, 1) for k in range(1000, 12000))


def answer_each_big(sock):
    """`answer_each` with a ~64 KiB answer (MANY_KEYS)."""
    answer_each(sock, MANY_KEYS)


class FakeBroker:
    def __init__(self, handler=answer_each):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            with conn:
                self.handler(conn)
        except OSError as e:
            self.errors.append(e)

    def close(self):
        self.sock.close()
