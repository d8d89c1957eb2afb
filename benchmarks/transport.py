"""Transport: what the relays cost, and how fast traffic leaves a relay after a critical CVE.

    .venv/bin/python benchmarks/transport.py [--mb 100] [--repeats 3] [--cve-repeats 5]

1. Relay overhead. A TLS client (a site certificate of a fresh federation) streams ``--mb`` MB
   to a TLS server (the aggregator's certificate, mutual TLS) and waits for the server's SHA-256
   of what it received: directly, and through three relay processes (``python -m
   interconnect.relay``) with unconstrained links (no emulated delay or capacity). TLS runs end
   to end in both; the runs alternate and the median of ``--repeats`` is kept. Target: relayed
   at most 1.3x direct.
2. Time to move traffic after a CVE. The demo network with one relay process per router and
   access node, the path engine as controller (min security 50), Cleveland's site streaming
   over its path (through router-5). CVE-2022-36787 (CVSS 9.8) is added to router-5; measured:
   from the call to the moment the site's stream is cut at the client (its connection is closed
   by the relays of the old route), from the engine's event to the relays leaving the route
   having closed it, and to the whole new route being pushed. Target: under 1 s. Each
   repetition uses a fresh engine and controller.
3. Emulated links against the simulation's estimate: 8 MB over the same three relays, each hop
   emulating 50 Mbit/s and 2 ms, against ``estimate_transfer_s`` (the path's bottleneck and
   total delay) for it.

Unconstrained hops are spliced by the kernel (splice(2)); the copying path is also measured
(``ZERO_COPY`` off in the relay processes, through PAROMA_RELAY_COPY=1).

Prints a table and writes benchmarks/results/transport.json (with the machine).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interconnect.pce import NvdClient, SecurePathEngine, load_scenario  # noqa: E402
from interconnect.pki import FederationPKI, IssuedCert, ssl_client_context, ssl_server_context  # noqa: E402
from interconnect.relay.client import RelayControlClient  # noqa: E402
from interconnect.relay.config import write_token  # noqa: E402
from interconnect.relay.controller import AggregatorEndpoint, RelayController, RelayEndpoint  # noqa: E402
from interconnect.relay.routes import LinkEmulation, RouteEntry  # noqa: E402
from interconnect.transfer import estimate_transfer_s  # noqa: E402

CHUNK = 1 << 20
RELAY_NODES = [f"router-{i}" for i in range(1, 7)] + [f"access-{i}" for i in range(1, 5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HashServer:
    """TLS server: reads an 8-byte length and that many bytes, answers their SHA-256; or streams
    forever when the length is 0 (for the re-routing measurement)."""

    def __init__(self, issued: IssuedCert) -> None:
        self.context = ssl_server_context(issued)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            header = b""
            while len(header) < 8:
                part = conn.recv(8 - len(header))
                if not part:
                    return
                header += part
            left = int.from_bytes(header, "big")
            digest = hashlib.sha256()
            buffer = bytearray(CHUNK)
            while left or header == b"\0" * 8:
                n = conn.recv_into(buffer, min(left, CHUNK) if left else CHUNK)
                if not n:
                    return
                digest.update(memoryview(buffer)[:n])
                left -= min(left, n)
            conn.sendall(digest.digest())
            conn.close()
        except (OSError, ssl.SSLError):
            return


def send(port: int, site: IssuedCert, payload: bytes) -> float:
    context = ssl_client_context(site)
    start = time.perf_counter()
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(len(payload).to_bytes(8, "big"))
        view = memoryview(payload)
        for i in range(0, len(payload), CHUNK):
            tls.sendall(view[i : i + CHUNK])
        answer = b""
        while len(answer) < 32:
            part = tls.recv(32 - len(answer))
            if not part:
                raise ConnectionError("server closed before answering")
            answer += part
    seconds = time.perf_counter() - start
    if answer != hashlib.sha256(payload).digest():
        raise RuntimeError("the server received other bytes than were sent")
    return seconds


class RelayProcesses:
    def __init__(self, folder: Path, nodes: list[str], *, copy: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.token_file = folder / "relay.token"
        self.token = write_token(self.token_file)
        self.endpoints: dict[str, RelayEndpoint] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if copy:
            env["PAROMA_RELAY_COPY"] = "1"
        for node in nodes:
            port, control = free_port(), free_port()
            config = folder / f"{node}.toml"
            config.write_text(
                f'[relay]\nname = "{node}"\nport = {port}\ncontrol_port = {control}\ntoken_file = "relay.token"\n'
            )
            self.processes[node] = subprocess.Popen(
                [sys.executable, "-m", "interconnect.relay", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.endpoints[node] = RelayEndpoint(node, "127.0.0.1", port, f"http://127.0.0.1:{control}")
        for node, endpoint in self.endpoints.items():
            client = RelayControlClient(node, endpoint.control_url, self.token)
            deadline = time.monotonic() + 60
            while not client.healthy():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"relay {node} did not start")
                time.sleep(0.1)
            client.close()

    def client(self, node: str) -> RelayControlClient:
        return RelayControlClient(node, self.endpoints[node].control_url, self.token)

    def cpu_s(self) -> float:
        """CPU time (user + system, the kernel's splicing included) the relays have used."""
        total = 0
        for process in self.processes.values():
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def _own_cpu_s() -> float:
    """CPU time of this process: the TLS client and the hashing TLS server (threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def relay_overhead(folder: Path, mb: int, repeats: int, *, copy: bool = False) -> dict[str, Any]:
    name = "copy" if copy else "splice"
    pki = FederationPKI.create(folder / f"pki-{name}", name="bench")
    aggregator, site = pki.issue("aggregator", "aggregator"), pki.issue("site", "cleveland")
    server = HashServer(aggregator)
    relays = RelayProcesses(folder / name, ["r1", "r2", "r3"], copy=copy)
    try:
        nodes = ["r1", "r2", "r3"]
        ingress = 0
        for i in reversed(range(3)):
            last = i == 2
            next_port = server.port if last else relays.endpoints[nodes[i + 1]].port
            entry = RouteEntry(
                "bench", 1, "127.0.0.1", next_port, not last, ingress_port=0 if i == 0 else None
            )
            answer = relays.client(nodes[i]).put_route(entry)
            ingress = int(answer["ingress_port"] or 0)
        payload = os.urandom(mb * 2**20)
        send(server.port, site, payload[: 2**20])  # warm up both ways
        send(ingress, site, payload[: 2**20])
        direct, relayed = [], []
        endpoints_direct, endpoints_relayed, relays_cpu = [], [], []
        for _ in range(repeats):
            own = _own_cpu_s()
            direct.append(send(server.port, site, payload))
            endpoints_direct.append(_own_cpu_s() - own)
            own, used = _own_cpu_s(), relays.cpu_s()
            relayed.append(send(ingress, site, payload))
            endpoints_relayed.append(_own_cpu_s() - own)
            relays_cpu.append(relays.cpu_s() - used)
        d, r = statistics.median(direct), statistics.median(relayed)
        # Every byte crosses four loopback TCP connections instead of one: on a machine with
        # few cores the relays' CPU competes with the TLS endpoints', so the relayed transfer
        # cannot take less than all the CPU it needs spread over every core.
        cores = os.cpu_count() or 1
        cpu_floor = (statistics.median(endpoints_relayed) + statistics.median(relays_cpu)) / cores
        hop = LinkEmulation(2_000, 50.0, "bench")
        for i in reversed(range(3)):
            last = i == 2
            next_port = server.port if last else relays.endpoints[nodes[i + 1]].port
            entry = RouteEntry("bench", 2, "127.0.0.1", next_port, not last, hop, hop, 0 if i == 0 else None)
            relays.client(nodes[i]).put_route(entry)
        shaped_payload = payload[: 8 * 2**20]
        shaped = statistics.median(send(ingress, site, shaped_payload) for _ in range(2))
        estimate = estimate_transfer_s(3 * hop.delay_us, 50.0, len(shaped_payload))
        return {
            "emulated": {
                "bytes": len(shaped_payload),
                "hops": 3,
                "per_hop": hop.as_dict(),
                "measured_s": shaped,
                "estimate_one_way_s": estimate,
                "ratio": shaped / estimate,
            },
            "mb": mb,
            "direct_s": direct,
            "relayed_s": relayed,
            "direct_median_s": d,
            "relayed_median_s": r,
            "ratio": r / d,
            "cpu": {
                "cores": cores,
                "endpoints_direct_s": statistics.median(endpoints_direct),
                "endpoints_relayed_s": statistics.median(endpoints_relayed),
                "relays_s": statistics.median(relays_cpu),
                "relayed_floor_s": cpu_floor,
                "floor_ratio": cpu_floor / d,
            },
            "direct_mbit_s": mb * 2**20 * 8 / d / 1e6,
            "relayed_mbit_s": mb * 2**20 * 8 / r / 1e6,
            "target_ratio": 1.3,
        }
    finally:
        relays.close()


def stream_until_cut(port: int, site: IssuedCert, started: threading.Event, cut: list[float]) -> None:
    context = ssl_client_context(site)
    block = os.urandom(64 * 1024)
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"\0" * 8)  # stream forever
            tls.sendall(block)
            started.set()
            while True:
                tls.sendall(block)
                time.sleep(0.002)  # a steady stream, not a flood
    except (OSError, ssl.SSLError):
        cut.append(time.time())
    finally:
        started.set()


def cve_move(folder: Path, repeats: int) -> dict[str, Any]:
    nvd = NvdClient()
    pki = FederationPKI.create(folder / "pki-cve", name="bench-cve")
    aggregator, site = pki.issue("aggregator", "aggregator"), pki.issue("site", "cleveland")
    server = HashServer(aggregator)
    relays = RelayProcesses(folder, RELAY_NODES)
    cve = nvd.lookup("CVE-2022-36787")
    client_s, controller_s, applied_s = [], [], []
    try:
        for _ in range(repeats):
            engine = SecurePathEngine(*load_scenario("demo", nvd))
            controller = RelayController(
                engine,
                relays.endpoints,
                sites={"cleveland": "hospital-cleveland"},
                aggregator=AggregatorEndpoint("aggregator", "127.0.0.1", server.port),
                token=relays.token,
                min_security=50,
            )
            controller.start()
            try:
                _, port = controller.ingress_for("cleveland")
                assert "router-5" in controller.route_of("cleveland")
                started, cut = threading.Event(), []
                streamer = threading.Thread(
                    target=stream_until_cut, args=(port, site, started, cut), daemon=True
                )
                streamer.start()
                started.wait(10)
                time.sleep(0.2)
                t0 = time.time()
                engine.add_vulnerability("router-5", cve)
                streamer.join(10)
                controller.wait_idle()
                if not cut:
                    raise RuntimeError("the stream over router-5 was not cut")
                client_s.append(cut[0] - t0)
                (record,) = [r for r in controller.reroutes if "router-5" in r.old_nodes]
                controller_s.append(record.seconds)
                applied_s.append(record.applied_seconds)
                assert "router-5" not in controller.route_of("cleveland")
            finally:
                controller.stop()
    finally:
        relays.close()
    return {
        "cve": cve.cve_id,
        "base_score": cve.base_score,
        "node": "router-5",
        "client_cut_s": client_s,
        "controller_s": controller_s,
        "client_cut_median_s": statistics.median(client_s),
        "client_cut_max_s": max(client_s),
        "controller_median_s": statistics.median(controller_s),
        "applied_s": applied_s,
        "applied_median_s": statistics.median(applied_s),
        "target_s": 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cve-repeats", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overhead = relay_overhead(folder, args.mb, args.repeats)
        copying = relay_overhead(folder, args.mb, args.repeats, copy=True)
        move = cve_move(folder, args.cve_repeats)
    e = overhead["emulated"]
    rows = [
        [
            f"{args.mb} MB, TLS end to end: 3 unconstrained relay hops vs direct",
            f"{overhead['relayed_median_s']:.3f} s vs {overhead['direct_median_s']:.3f} s "
            f"({overhead['relayed_mbit_s']:.0f} vs {overhead['direct_mbit_s']:.0f} Mbit/s)",
            f"{overhead['ratio']:.2f}x",
            "<= 1.3x",
            "met" if overhead["ratio"] <= 1.3 else "NOT met",
        ],
        [
            f"  CPU per relayed transfer: TLS endpoints {overhead['cpu']['endpoints_relayed_s']:.3f} s, "
            f"the 3 relays {overhead['cpu']['relays_s']:.3f} s (direct: endpoints "
            f"{overhead['cpu']['endpoints_direct_s']:.3f} s)",
            f"on {overhead['cpu']['cores']} cores at least {overhead['cpu']['relayed_floor_s']:.3f} s",
            f"{overhead['cpu']['floor_ratio']:.2f}x",
            "",
            "",
        ],
        [
            "  same, relays copying through user space (no splice)",
            f"{copying['relayed_median_s']:.3f} s vs {copying['direct_median_s']:.3f} s "
            f"({copying['relayed_mbit_s']:.0f} vs {copying['direct_mbit_s']:.0f} Mbit/s)",
            f"{copying['ratio']:.2f}x",
            "",
            "",
        ],
        [
            f"CVSS {move['base_score']} on {move['node']} of an active path: stream cut at the site",
            f"median {move['client_cut_median_s'] * 1000:.0f} ms, max {move['client_cut_max_s'] * 1000:.0f} ms "
            f"(n={len(move['client_cut_s'])})",
            "",
            "< 1 s",
            "met" if move["client_cut_max_s"] < 1.0 else "NOT met",
        ],
        [
            "  same, engine event to the relays leaving the route having closed it",
            f"median {move['controller_median_s'] * 1000:.0f} ms",
            "",
            "",
            "",
        ],
        [
            "  same, engine event to the whole new route pushed",
            f"median {move['applied_median_s'] * 1000:.0f} ms",
            "",
            "",
            "",
        ],
        [
            "8 MB over 3 relays emulating 50 Mbit/s + 2 ms each, vs the simulation's estimate",
            f"{e['measured_s']:.3f} s vs estimate {e['estimate_one_way_s']:.3f} s",
            f"{e['ratio']:.2f}x",
            "",
            "",
        ],
    ]
    table = markdown_table(["measurement", "result", "ratio", "target", ""], rows)
    print(table)
    path = write_result(
        "transport",
        {
            "relay_overhead": overhead,
            "relay_overhead_copying": copying,
            "cve_move": move,
            "load_average": os.getloadavg(),
            "seconds": time.perf_counter() - started,
            "table": rows,
            "table_markdown": table,
        },
    )
    print(
        f"load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    print(f"\nwrote {path.relative_to(ROOT)} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
