"""Measured against simulated, per octave band: the table the demo prints and the pictures it saves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COMPARED_METRICS = (("t30_s", "T30 s", "{:.2f}"), ("edt_s", "EDT s", "{:.2f}"), ("c80_db", "C80 dB", "{:+.1f}"), ("d50", "D50", "{:.2f}"))


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def comparison_table(title: str, measured: dict[str, Any], simulated: dict[str, Any]) -> str:
    """One text table: bands as rows, each metric measured / simulated side by side, then STI."""
    bands = measured["bands_hz"]
    header = f"{'band Hz':>8} " + " ".join(f"{label + ' meas/sim':>20}" for _, label, _ in COMPARED_METRICS)
    lines = [title, header]
    rows = [(str(band), index) for index, band in enumerate(bands)] + [("all", None)]
    for name, index in rows:
        cells = []
        for key, _, fmt in COMPARED_METRICS:
            pick = (lambda result: result[key]["broadband"]) if index is None else (lambda result: result[key]["bands"][index])
            cells.append(f"{_cell(pick(measured), fmt) + ' / ' + _cell(pick(simulated), fmt):>20}")
        lines.append(f"{name:>8} " + " ".join(cells))
    lines.append(f"{'STI':>8} {_cell(measured['sti']['value'], '{:.3f}')} / {_cell(simulated['sti']['value'], '{:.3f}')}")
    return "\n".join(lines)


def save_plots(pairs: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Decay curves of every pair and T30/C80 per band, measured against simulated, as PNG files.

    Each item of ``pairs``: ``{"label", "measured": result, "simulated": result}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for pair in pairs:
        figure, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True, sharey=True)
        for axis, key in zip(axes.flat, [str(b) for b in pair["measured"]["bands_hz"]] + ["broadband"]):
            for result, style, name in ((pair["measured"], "-", "measured"), (pair["simulated"], "--", "simulated")):
                curves = result.get("decay_curves") or {}
                values = (curves.get("bands") or {}).get(key)
                if values:
                    axis.plot(curves["time_s"], [float("nan") if v is None else v for v in values], style, label=name)
            axis.set_title(f"{key} Hz" if key != "broadband" else "broadband")
            axis.set_ylim(-70, 3)
            axis.grid(alpha=0.3)
        axes[0, 0].legend()
        for axis in axes[1]:
            axis.set_xlabel("time s")
        for axis in axes[:, 0]:
            axis.set_ylabel("energy decay dB")
        figure.suptitle(f"Schroeder decay curves — {pair['label']}")
        path = out_dir / f"decay_{pair['label']}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        written.append(path)

    figure, (t30_axis, c80_axis) = plt.subplots(1, 2, figsize=(13, 4.5))
    bands = pairs[0]["measured"]["bands_hz"]
    positions = range(len(bands))
    for axis, key, label in ((t30_axis, "t30_s", "T30 s"), (c80_axis, "c80_db", "C80 dB")):
        for pair in pairs:
            measured = [float("nan") if v is None else v for v in pair["measured"][key]["bands"]]
            simulated = [float("nan") if v is None else v for v in pair["simulated"][key]["bands"]]
            (line,) = axis.plot(positions, measured, "o-", label=f"{pair['label']} measured")
            axis.plot(positions, simulated, "x--", color=line.get_color(), label=f"{pair['label']} simulated")
        axis.set_xticks(list(positions), [str(b) for b in bands])
        axis.set_xlabel("octave band Hz")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    t30_axis.legend(fontsize=7)
    figure.suptitle("Measured against simulated, per octave band")
    path = out_dir / "bands_t30_c80.png"
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)
    written.append(path)
    return written
