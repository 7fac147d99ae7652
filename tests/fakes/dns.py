"""A tiny authoritative nameserver on 127.0.0.1 for tests: MX, A and AAAA.

    server = FakeDNS({"example.com": {"MX": ["10 mx00.ionos.de."]}}).start()
    settings.DNS_NAMESERVERS = [server.nameserver]   # "127.0.0.1:PORT"

Names it does not know get NXDOMAIN; a known name without the asked type gets
an empty answer (NoAnswer). `silent` names are never answered (timeouts).
Every question is recorded in `queries` as (name, type).
"""

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeDNS:
    def __init__(self, zones: dict[str, dict[str, list[str]]] | None = None, *, silent: tuple[str, ...] = ()):
        self.zones = {}
        for name, records in (zones or {}).items():
            self.add(name, **records)
        self.silent = {self._key(name) for name in silent}
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stopped = threading.Event()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def _key(name: str) -> str:
        return name.lower().rstrip(".") + "."

    def add(self, name: str, **records: list[str]) -> None:
        """add("example.com", MX=["10 mx.example.com."], A=["192.0.2.1"])"""
        self.zones.setdefault(self._key(name), {}).update({kind.upper(): list(v) for kind, v in records.items()})

    def start(self) -> "FakeDNS":
        self._sock.settimeout(0.1)  # lets stop() end the loop quickly
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                answer = self._answer(dns.message.from_wire(wire))
            except Exception:  # noqa: BLE001 - a broken packet must not stop the test server
                continue
            if answer is not None:
                self._sock.sendto(answer.to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name, kind = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), kind))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = self.zones.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        values = records.get(kind, [])
        if values:
            response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", kind, values))
        return response
