"""A Kafka-frame-aware TCP relay to put between wasm-sidecar and tansu, which breaks
connections on command the way a broker that crashes, restarts or is cut off does.

    client -> wasm-sidecar (the filter) -> FaultProxy -> tansu

It relays frame by frame (size prefix + body, read whole, then written on): it notes the API
key of each request by its correlation id, so a response can be told by the request it
answers. A `Rule` picks one frame by direction and API key (and a minimum size, to choose a
Fetch response that carries records) and breaks the connection in the middle of it:

- `cut` how much of the frame (size prefix included) goes through first: 0.5 = half of it,
  0 = none of it (the frame is swallowed: "the broker closes with responses pending");
- `how` "rst" resets both sockets (SO_LINGER 0: an RST to the sidecar and one to tansu, a
  broker that crashed or a connection cut by the network), "fin" sends the sidecar a FIN (a
  broker closing the connection) and then reads and drops what the sidecar still sends until
  it closes too, so no RST follows; the connection to tansu is reset in both cases (tansu's
  side of it is not what is tested).

Before breaking, the relay waits `settle` seconds after writing the cut frame's first part, so
those bytes are read by the peer before the reset (an RST can discard data the peer has not
read yet, which would turn "half a frame" into "no frame").

`delay[api_key] = seconds` holds each response to that API (a slow broker), so a client's
requests are surely in flight when it goes away.

`gate.clear()` holds every response at the relay (requests still go through) until
`gate.set()`: many connections with requests in flight at once; rules armed meanwhile apply to
the held responses.

`down()` is a broker that is gone: every relayed connection is reset and the listening socket
closed, so new upstream connections are refused; `up()` listens again on the same port (tansu
kept running behind, with its data: a broker restart with persistent storage, as the sidecar
sees it)."""
import socket
import struct
import threading
import time

REQUEST, RESPONSE = "request", "response"


def _exact(sock, n):
    """`n` bytes, or what came before EOF (possibly b"")."""
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _reset(sock):
    """Close with an RST (SO_LINGER on, timeout 0). Another thread may be blocked reading the
    socket: the kernel releases it (and sends the RST) only once that read returns, so the
    read is woken first with shutdown(SHUT_RD), which sends nothing."""
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
                 lambda: sock.shutdown(socket.SHUT_RD),
                 sock.close):
        try:
            step()
        except OSError:
            pass


class Rule:
    """Break the connection inside frames that match (see the module doc): `skip` matching
    frames go through first, then one is broken, then `gap` go through, then the next is
    broken, ..., `times` in all."""

    def __init__(self, direction, api_key, times=1, skip=0, gap=0, cut=0.5, how="rst", min_size=0,
                 since=0):
        assert direction in (REQUEST, RESPONSE) and how in ("rst", "fin") and 0 <= cut < 1
        self.direction, self.api_key, self.times, self.skip = direction, api_key, times, skip
        self.gap = gap  # matching frames let through after each firing
        self.since = since  # only on connections the relay accepted from the since-th on
        self.cut, self.how, self.min_size = cut, how, min_size
        self.seen = 0  # matching frames so far (skipped ones included)
        self.fired = 0
        self.done = threading.Event()  # set once it has fired `times` times

    def matches(self, direction, api_key, size, link):
        return (direction == self.direction and api_key == self.api_key and link >= self.since
                and size >= self.min_size and self.fired < self.times)


class Link:
    """One relayed connection: the sidecar's (down) and ours to tansu (up)."""

    def __init__(self, proxy, down, up, index):
        self.proxy, self.down, self.up, self.index = proxy, down, up, index
        self.pending = {}  # correlation id -> api key of requests not answered yet
        self.lock = threading.Lock()
        self.killed = False
        self.draining = False
        self.ended = threading.Event()
        self._alive = 2
        for direction in (REQUEST, RESPONSE):
            threading.Thread(target=self._run, args=(direction,), daemon=True).start()

    def _run(self, direction):
        try:
            if direction == REQUEST:
                self._pump(self.down, self.up, REQUEST)
            else:
                self._pump(self.up, self.down, RESPONSE)
        except OSError:
            if self.killed:
                self._drain(direction)
            else:
                self.kill("rst")
        finally:
            with self.lock:
                self._alive -= 1
                last = self._alive == 0
            if last:
                with self.lock:
                    clean = not self.killed
                    self.killed = True
                if clean:  # both directions ended with a FIN: an ordinary close
                    for s in (self.down, self.up):
                        try:
                            s.close()
                        except OSError:
                            pass
                self.ended.set()

    def _pump(self, src, dst, direction):
        while True:
            head = _exact(src, 4)
            if self.killed:  # woken by kill(): the connection is already broken
                self._drain(direction)
                return
            if len(head) < 4:
                if head:
                    dst.sendall(head)
                dst.shutdown(socket.SHUT_WR)  # the peer's FIN goes on
                return
            (n,) = struct.unpack(">i", head)
            body = _exact(src, max(n, 0))
            if self.killed:
                self._drain(direction)
                return
            frame = head + body
            if len(body) < n:  # cut short by the peer's FIN: relay what came, then the FIN
                dst.sendall(frame)
                dst.shutdown(socket.SHUT_WR)
                return
            if direction == RESPONSE:
                self.proxy.gate.wait()
                if self.killed:
                    return
            api_key = None
            if direction == REQUEST and len(body) >= 8:
                api_key, _, corr = struct.unpack(">hhi", body[:8])
                self.pending[corr] = api_key
            elif direction == RESPONSE and len(body) >= 4:
                api_key = self.pending.pop(struct.unpack(">i", body[:4])[0], None)
            rule = self.proxy._take(direction, api_key, len(frame), self.index)
            if rule is None:
                if direction == RESPONSE and self.proxy.delay.get(api_key):
                    time.sleep(self.proxy.delay[api_key])
                dst.sendall(frame)
                continue
            part = frame[:int(len(frame) * rule.cut)]
            if part:
                dst.sendall(part)
                time.sleep(self.proxy.settle)
            self.proxy.events.append((direction, api_key, len(frame), len(part), rule.how, time.time()))
            self.kill(rule.how)
            with self.proxy.lock:
                rule.fired += 1
                if rule.fired >= rule.times:
                    rule.done.set()
            self._drain(direction)
            return

    def kill(self, how):
        with self.lock:
            if self.killed:
                return
            self.killed = True
            self.draining = how == "fin"
        _reset(self.up)
        if how == "rst":
            _reset(self.down)
            return
        try:
            self.down.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _drain(self, direction):
        """After a "fin" kill, the thread that reads the sidecar reads on until the sidecar
        closes too (or 10 s), so the FIN is the only signal: closing with unread bytes would
        send an RST after it."""
        if direction != REQUEST or not self.draining:
            return
        try:
            self.down.settimeout(10)
            while self.down.recv(65536):
                pass
        except OSError:
            pass
        try:
            self.down.close()
        except OSError:
            pass


class FaultProxy:
    def __init__(self, upstream_port, settle=0.3):
        self.upstream = ("127.0.0.1", upstream_port)
        self.settle = settle
        self.lock = threading.Lock()
        self.rules = []
        self.delay = {}  # api key -> seconds each of its responses is held before it goes on
        self.gate = threading.Event()  # cleared: every response is held at the relay
        self.gate.set()
        self.links = []
        self.events = []  # (direction, api key, frame size, bytes let through, how, time) per fault
        self.accepted = 0
        self.port = None
        self._listen()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def _listen(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port or 0))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def _accept(self, sock):
        while True:
            try:
                down, _ = sock.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                # tansu is not there (killed): the sidecar's connection is reset just after it
                # was accepted (a broker host with nothing listening would refuse it instead;
                # the sidecar closes its client the same way in both cases)
                _reset(down)
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.links.append(Link(self, down, up, self.accepted))
                self.accepted += 1

    def _take(self, direction, api_key, size, link):
        with self.lock:
            for rule in self.rules:
                if rule.matches(direction, api_key, size, link):
                    rule.seen += 1
                    if rule.seen > rule.skip:
                        rule.skip = rule.seen + rule.gap
                        return rule
        return None

    def arm(self, direction, api_key, **kw):
        rule = Rule(direction, api_key, **kw)
        with self.lock:
            self.rules.append(rule)
        return rule

    def disarm(self):
        with self.lock:
            self.rules = []

    def reset_all(self):
        with self.lock:
            links = list(self.links)
        for link in links:
            link.kill("rst")

    def down(self):
        """The broker is gone: listening socket closed (connections refused), every relayed
        connection reset."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
        except OSError:
            pass
        self.sock.close()
        self.reset_all()

    def up(self):
        self._listen()

    def open_links(self):
        with self.lock:
            return sum(1 for link in self.links if not link.ended.is_set())

    def close(self):
        self.down()
