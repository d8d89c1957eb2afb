"""The multi-process federation's round time against the same job on Flower's simulation runtime.

Both runs use the same four site folders (the UCI hospitals with the demo's consent mixes, built
by ``paroma up``), the same job (the demo job, ``--rounds`` rounds of ``--local-steps`` steps)
and the same machine, one after the other:

- simulation: ``deploy.simulation.run_simulated_job`` (Flower's simulation runtime, Ray, one
  virtual SuperNode per site, everything in one process tree);
- deployment: ``paroma up`` (relays with link emulation, Secure Traffic Engine, SuperLink with
  TLS and SuperNode authentication, one SuperNode per site dialling through its relays) and the
  job submitted as a Flower run (``deploy.flower_jobs``).

Round time is the aggregator's own measure (``seconds`` of each round in ``federation.json``:
train and evaluate messages out and back). The table shows the mean over rounds and the ratio
deployment / simulation. ``.venv/bin/python benchmarks/federation_round.py`` writes
``benchmarks/results/federation_round.json``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import markdown_table, write_result  # type: ignore[import-not-found]

from deploy import launcher
from deploy.federation_config import load_federation_config
from deploy.flower_jobs import submit, wait
from deploy.simulation import run_simulated_job
from deploy.workdir import Workdir
from paroma.demo import demo_job

SITES = {
    "cleveland": "hospital-cleveland",
    "hungarian": "hospital-hungary",
    "switzerland": "hospital-switzerland",
    "va": "hospital-va",
}


def _free_base(size: int = 100) -> int:
    for base in range(41_000, 60_000, 101):
        taken = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                taken.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in taken:
                s.close()
    raise RuntimeError("no free block of ports")


def _config(folder: Path, base: int) -> Path:
    sites = "".join(
        f'\n[[site]]\nid = "{s}"\nnode = "{n}"\ndata = "uci:{s}"\nconsent = "demo"\n'
        f"fhir_port = {base + 60 + i}\nsupernode_port = {base + 70 + i}\ningress_port = {base + 80 + i}\n"
        for i, (s, n) in enumerate(SITES.items())
    )
    path = folder / "federation.toml"
    path.write_text(
        f'[federation]\nname = "bench"\nworkdir = "state"\ntopology = "demo"\n\n'
        f'[aggregator]\nnode = "aggregator"\nsuperlink_port = {base + 90}\n\n[pce]\nport = {base + 91}\n\n'
        f"[relays]\nbase_port = {base}\ncontrol_base_port = {base + 20}\n{sites}"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    args = parser.parse_args()
    job = demo_job(args.rounds)
    job = replace(job, training=replace(job.training, local_steps=args.local_steps), round_timeout_s=300.0)

    with tempfile.TemporaryDirectory(prefix="paroma-bench-") as tmp:
        config = load_federation_config(_config(Path(tmp), _free_base()))
        t0 = time.perf_counter()
        launcher.up(config, echo=print, timeout_s=300)
        up_seconds = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            deployed = wait(config, submit(config, job), timeout_s=3600)
            deployed_wall = time.perf_counter() - t0
        finally:
            launcher.down(config)
        sites = [Workdir(config.workdir).site(s) for s in SITES]
        t0 = time.perf_counter()
        simulated = run_simulated_job(job, sites).to_dict()
        simulated_wall = time.perf_counter() - t0

    if deployed.get("status") != "completed" or simulated.get("status") != "completed":
        raise SystemExit(
            f"a run failed: deployment {deployed.get('reason')!r}, simulation {simulated.get('reason')!r}"
        )
    dep = [float(r["seconds"]) for r in deployed["rounds"]]
    sim = [float(r["seconds"]) for r in simulated["rounds"]]
    rows = [
        ["simulation runtime (Ray)", statistics.mean(sim), min(sim), simulated_wall, 1.0],
        [
            "paroma up (relays, TLS, SuperNode auth)",
            statistics.mean(dep),
            min(dep),
            deployed_wall,
            statistics.mean(dep) / statistics.mean(sim),
        ],
    ]
    print(
        f"\n{args.rounds} rounds x {args.local_steps} local steps, 4 UCI sites; `paroma up` took {up_seconds:.1f} s\n"
    )
    table = markdown_table(["runtime", "mean round s", "fastest round s", "job wall s", "ratio"], rows)
    print(table)
    path = write_result(
        "federation_round",
        {
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "up_seconds": up_seconds,
            "simulation": {"round_seconds": sim, "wall_seconds": simulated_wall},
            "deployment": {"round_seconds": dep, "wall_seconds": deployed_wall},
            "ratio_mean_round": statistics.mean(dep) / statistics.mean(sim),
            "table_markdown": table,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
