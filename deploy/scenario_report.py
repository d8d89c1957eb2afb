"""The HTML report of a scenario run: one self-contained file (plots as inline PNG).

Plots: test accuracy per round per site (and the mean), cohort sizes per round (patients
the protection layer permitted, and the rows each site trained on), each site's path
security and estimated transfer time per round with the network events marked, and the
privacy each site spent (epsilon at the job's delta). Tables: admissions, final accuracy
per site, network events and the paths they moved, consent withdrawals, attacks.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.scenario_run import ScenarioRun


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode()


def _series(run: ScenarioRun, value: Any) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {s.id: [] for s in run.scenario.sites}
    for r in run.federation.rounds:
        for site in out:
            entry = r.sites.get(site)
            v = value(entry) if entry is not None else None
            out[site].append(float("nan") if v is None else float(v))
    return out


def _event_lines(ax: Any, run: ScenarioRun) -> None:
    for event in run.events:
        ax.axvline(event.round - 0.5, color="crimson", linestyle="--", linewidth=1)
        ax.annotate(
            event.description, (event.round - 0.5, 1.0), xycoords=("data", "axes fraction"),
            rotation=90, va="top", ha="right", fontsize=7, color="crimson",
        )  # fmt: skip


def figures(run: ScenarioRun) -> dict[str, str]:
    """The report's plots as base64 PNG, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.server_round for r in run.federation.rounds]
    out: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for site, values in _series(run, lambda e: e.evaluate.get("accuracy")).items():
        ax.plot(rounds, values, marker="o", markersize=3, label=site, alpha=0.8)
    ax.plot(
        rounds, [r.mean_accuracy for r in run.federation.rounds], color="black", linewidth=2, label="mean"
    )
    _event_lines(ax, run)
    ax.set(xlabel="round", ylabel="test accuracy", title="Test accuracy per site", ylim=(0.0, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    out["accuracy"] = _png(fig)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for site, values in _series(run, lambda e: e.cohort.get("permit")).items():
        ax1.plot(rounds, values, marker="o", markersize=3, label=site)
    for site, values in _series(run, lambda e: e.n_train or None).items():
        ax2.plot(rounds, values, marker="o", markersize=3, label=site)
    ax1.set(xlabel="round", ylabel="patients", title="PERMIT decisions per round")
    ax2.set(xlabel="round", ylabel="training rows", title="Rows trained on per round")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out["cohort"] = _png(fig)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if run.paths:
        path_rounds = sorted(run.paths)
        for site in [s.id for s in run.scenario.sites if s.node]:
            security = [
                run.paths[r][site].path_security if run.paths[r][site].status == "active" else float("nan")
                for r in path_rounds
            ]
            transfer = [
                1e3 * run.paths[r][site].transfer_s if run.paths[r][site].status == "active" else float("nan")
                for r in path_rounds
            ]
            ax1.plot(path_rounds, security, marker="o", markersize=3, label=site)
            ax2.plot(path_rounds, transfer, marker="o", markersize=3, label=site)
        _event_lines(ax1, run)
        _event_lines(ax2, run)
    else:
        for ax in (ax1, ax2):
            ax.text(
                0.5, 0.5, "no site is placed on a topology", ha="center", va="center", transform=ax.transAxes
            )
    ax1.set(xlabel="round", ylabel="path security (%)", title="Path security (no node compromised)")
    ax2.set(xlabel="round", ylabel="ms per round", title="Estimated transfer time (missing: cut off)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out["paths"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    epsilons = _series(run, lambda e: e.privacy.get("epsilon"))
    finite = [v for vs in epsilons.values() for v in vs if math.isfinite(v)]
    if finite:
        for site, values in epsilons.items():
            ax.plot(rounds, values, marker="o", markersize=3, label=site)
        ax.set(ylabel=f"epsilon at delta {run.job.privacy.delta:g}")
        ax.legend(fontsize=7)
    else:
        ax.text(
            0.5, 0.5, "no differential privacy in this job: no epsilon is defined",
            ha="center", va="center", transform=ax.transAxes,
        )  # fmt: skip
    ax.set(xlabel="round", title="Privacy spent per site (site-enforced DP, RDP accountant)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out["privacy"] = _png(fig)
    plt.close(fig)
    return out


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def render(run: ScenarioRun) -> str:
    s, job, fed = run.scenario, run.job, run.federation
    plots = figures(run)
    final = fed.rounds[-1] if fed.rounds else None
    site_rows = []
    for site in s.sites:
        entry = final.sites.get(site.id) if final else None
        site_rows.append(
            [
                site.id,
                site.data_text,
                site.consent_text,
                site.node or "-",
                f"{entry.n_train}/{entry.n_test}" if entry else "-",
                _fmt(entry.evaluate.get("accuracy")) if entry else "absent",
                entry.error if entry and entry.error else "",
            ]
        )
    event_rows = [
        [e.round, e.description, "; ".join(f"{k}: {v}" for k, v in e.moved.items()) or "no path moved"]
        for e in run.events
    ]
    revoked_rows = [[r, site, n] for r, sites in sorted(run.revoked.items()) for site, n in sites.items()]
    attack_rows = [[a.site, a.kind, a.scale, a.noise_std, a.from_round] for a in s.attacks]
    admission_rows = [[a.site_id, "yes" if a.accepted else "no", a.reason] for a in fed.admissions]
    privacy = job.privacy
    sections = [
        f"<h1>Scenario {html.escape(s.name)}</h1>",
        f"<p>{html.escape(s.description)}</p>",
        "<p>"
        + html.escape(
            f"Job {job.name} (sha256 {job.sha256[:16]}…): strategy {job.strategy} {job.strategy_params or ''}, "
            f"{job.rounds} rounds x {job.training.local_steps} local steps, seed {job.seed}; privacy: "
            + (
                f"mode {privacy.mode}, clip norm {privacy.clip_norm:g}, noise multiplier {privacy.noise_multiplier:g}, delta {privacy.delta:g}"
                if privacy.noise_multiplier > 0
                else "no DP asked by the job"
            )
            + f". Status: {fed.status}{': ' + fed.reason if fed.reason else ''}. "
            f"Ran in {run.seconds:.1f} s on the {run.runtime} runtime; model {run.model_bytes} bytes."
        )
        + "</p>",
        "<h2>Sites</h2>",
        _table(
            ["site", "data", "consent", "topology node", "train/test (final)", "accuracy (final)", "error"],
            site_rows,
        ),
        "<h2>Admission</h2>",
        _table(["site", "admitted", "reason"], admission_rows),
        "<h2>Accuracy per round</h2>",
        f'<img alt="accuracy per round per site" src="data:image/png;base64,{plots["accuracy"]}">',
        "<h2>Cohort sizes per round</h2>",
        f'<img alt="cohort sizes per round" src="data:image/png;base64,{plots["cohort"]}">',
    ]
    if revoked_rows:
        sections.append(_table(["before round", "site", "patients withdrawing consent"], revoked_rows))
    sections += [
        "<h2>Network paths</h2>",
        f'<img alt="path security and transfer time per round" src="data:image/png;base64,{plots["paths"]}">',
        _table(["before round", "event", "paths"], event_rows) if event_rows else "<p>No network event.</p>",
        "<h2>Privacy spent</h2>",
        f'<img alt="privacy spent per round" src="data:image/png;base64,{plots["privacy"]}">',
    ]
    if attack_rows:
        sections += [
            "<h2>Attacks</h2>",
            _table(["site", "kind", "scale", "noise std", "from round"], attack_rows),
        ]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1050px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}th{background:#f2f2f2}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>PAROMA-MED scenario {html.escape(s.name)}</title><style>{style}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_report(run: ScenarioRun, path: Path) -> Path:
    text = render(run)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
