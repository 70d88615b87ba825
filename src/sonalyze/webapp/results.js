// Results of measurement.results (the measurement service's report per upload, docs/acoustics.md):
// tables with refused values shown as refused with their reason, spread across positions, CSV. Pure.

export const METRICS = [
  { key: "t20_s", label: "T20", unit: "s", digits: 2 },
  { key: "t30_s", label: "T30", unit: "s", digits: 2 },
  { key: "edt_s", label: "EDT", unit: "s", digits: 2 },
  { key: "c50_db", label: "C50", unit: "dB", digits: 1 },
  { key: "c80_db", label: "C80", unit: "dB", digits: 1 },
  { key: "d50", label: "D50", unit: "", digits: 2 },
  { key: "drr_db", label: "DRR", unit: "dB", digits: 1 },
];
export const STI = { key: "sti", label: "STI", unit: "", digits: 2 };

export const bandLabel = (band) => (band === "broadband" ? "broadband" : band >= 1000 ? `${band / 1000} kHz` : `${band} Hz`);

/** One value of a metric object: {value, refused, reason, code}. A null never shows as blank or zero. */
export function metricCell(metric, bandIndex, bandKey) {
  if (!metric) return { value: null, refused: true, reason: "not in this report", code: null };
  const value = bandIndex === null ? metric.broadband : metric.bands?.[bandIndex];
  if (value !== null && value !== undefined) return { value, refused: false, reason: null, code: null };
  return { value: null, refused: true, reason: metric.reasons?.[bandKey] ?? "no value given", code: metric.codes?.[bandKey] ?? null };
}

/** STI: the index is broadband; per band the modulation transfer index (MTI) it is made of. */
export function stiCell(sti, bandIndex) {
  if (!sti) return { value: null, refused: true, reason: "not in this report", code: null };
  const value = bandIndex === null ? sti.value : sti.mti?.[bandIndex];
  if (value !== null && value !== undefined) return { value, refused: false, reason: null, code: null };
  return { value: null, refused: true, reason: sti.reason ?? "no value given", code: sti.code ?? null };
}

/** Rows by band (7 octave bands then broadband), one cell per metric. `{error}` for a refused upload. */
export function reportTable(report) {
  if (!report) return { error: { code: "missing", message: "no result for this microphone" } };
  if (report.error) return { error: report.error };
  const bands = report.bands_hz ?? [];
  const keys = [...bands.map((b, i) => ({ key: String(b), index: i, band: b })), { key: "broadband", index: null, band: "broadband" }];
  const rows = keys.map(({ key, index, band }) => ({
    band, label: bandLabel(band),
    cells: [...METRICS.map((m) => ({ metric: m, ...metricCell(report[m.key], index, key) })), { metric: STI, ...stiCell(report.sti, index) }],
  }));
  return { rows, bands };
}

export function formatCell(cell) {
  if (cell.refused) return "refused";
  return cell.value.toFixed(cell.metric.digits);
}

/**
 * The pairs of one measurement.results push: [{speakerIndex, speaker, micIndex, microphone, upload, report}].
 * The analysis names uploads speaker-{i}_mic-{j}.wav (j indexes `microphones`).
 */
export function pairsOf(entry) {
  const results = entry?.analysis?.results ?? {};
  return (entry?.microphones ?? []).map((microphone, micIndex) => {
    const upload = `speaker-${entry.speaker_index}_mic-${micIndex}.wav`;
    const report = results[upload] ?? (entry.analysis?.error ? { error: entry.analysis.error } : null);
    return { speakerIndex: entry.speaker_index, speaker: entry.speaker_device_id, micIndex, microphone, upload, report };
  });
}

/** Per band: min, max and max − min of a metric across the pairs that have a value (ISO 3382-2 spread). */
export function spread(pairs, metricKey) {
  const reports = pairs.map((p) => p.report).filter((r) => r && !r.error && r[metricKey]);
  if (!reports.length) return [];
  return reports[0].bands_hz.map((band, i) => {
    const values = reports.map((r) => r[metricKey].bands[i]).filter((v) => v !== null && v !== undefined);
    if (!values.length) return { band, count: 0, min: null, max: null, range: null };
    const min = Math.min(...values), max = Math.max(...values);
    return { band, count: values.length, min, max, range: max - min };
  });
}

const csvField = (v) => {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
};

/** One line per session, speaker, microphone, metric and band; refused values have an empty value and their reason. */
export function toCsv(sessions, labelOf = (id) => id) {
  const lines = [["session_id", "speaker", "microphone", "metric", "band", "value", "unit", "refused_code", "refused_reason"].join(",")];
  for (const session of sessions) {
    for (const entry of session.results ?? []) {
      for (const pair of pairsOf(entry)) {
        const table = reportTable(pair.report);
        const who = [session.session_id, labelOf(pair.speaker), labelOf(pair.microphone)];
        if (table.error) {
          lines.push([...who, "analysis", "", "", "", table.error.code, table.error.message].map(csvField).join(","));
          continue;
        }
        for (const row of table.rows) {
          for (const cell of row.cells) {
            lines.push([...who, cell.metric.label, row.band, cell.refused ? "" : cell.value, cell.metric.unit,
              cell.refused ? cell.code ?? "refused" : "", cell.refused ? cell.reason : ""].map(csvField).join(","));
          }
        }
      }
    }
  }
  return lines.join("\n") + "\n";
}
