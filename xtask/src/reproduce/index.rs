//! `results/README.md`: the index of every table reported in a results
//! folder. Each report leaves a small summary beside it
//! (`table-N.summary.json`: cells run, sign agreement, profile, when it was
//! written); the index is rebuilt from the summaries on disk whenever a
//! report is written, so tables reported by separate invocations all appear.

use crate::tables::TableId;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The index's file name, in the results folder.
pub const INDEX: &str = "README.md";
/// What a report's summary file name ends with (`table-9.summary.json`).
pub const SUMMARY_SUFFIX: &str = ".summary.json";

/// What the index says of one report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSummary {
    /// The table.
    pub table: TableId,
    /// Its title.
    pub title: String,
    /// The profile its runs were planned with (`quick`).
    pub profile: String,
    /// Cells of the table, runnable or not.
    pub cells: usize,
    /// Cells with at least one finished run.
    pub cells_run: usize,
    /// Cells with both a printed gain and our gain.
    pub cells_with_gain: usize,
    /// Of those, cells where our gain has the printed gain's sign.
    pub same_sign: usize,
    /// When the report was written, UTC (`2026-12-05T07:23:33Z`).
    pub written: String,
}

/// The sign of `x`: -1, 0 or 1.
fn sign(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// Whether our gain has the printed gain's sign (zero is a sign of its own).
pub fn same_sign(paper: f64, ours: f64) -> bool {
    sign(paper) == sign(ours)
}

/// `(cells with both gains, cells among them with the same sign)` over
/// `(printed gain, our gain)` pairs.
pub fn sign_counts(gains: impl IntoIterator<Item = (Option<f64>, Option<f64>)>) -> (usize, usize) {
    gains.into_iter().fold((0, 0), |(with, same), g| match g {
        (Some(p), Some(o)) => (with + 1, same + usize::from(same_sign(p, o))),
        _ => (with, same),
    })
}

/// `path` of a report's summary: `<out>/<stem>.summary.json`.
pub fn summary_path(out: &Path, stem: &str) -> PathBuf {
    out.join(format!("{stem}{SUMMARY_SUFFIX}"))
}

/// `time` as RFC 3339 in UTC, to the second.
pub fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// One line of the index: a summary, or a file that could not be read.
enum Entry {
    Report(ReportSummary),
    Unreadable(String, String),
}

/// Reads every `*.summary.json` in `out`. An unreadable one is listed with
/// its error, and a warning names it; the others are still indexed.
fn read_summaries(out: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let dir = std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))?;
    for item in dir {
        let item = item.with_context(|| format!("listing {}", out.display()))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if !name.ends_with(SUMMARY_SUFFIX) || !item.path().is_file() {
            continue;
        }
        let path = item.path();
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<ReportSummary>(&text).map_err(|e| e.to_string()));
        match parsed {
            Ok(s) => entries.push(Entry::Report(s)),
            Err(e) => {
                eprintln!("warning: {}: unreadable report summary ({e}); the index lists it as unreadable", path.display());
                entries.push(Entry::Unreadable(name, e));
            }
        }
    }
    entries.sort_by(|a, b| match (a, b) {
        (Entry::Report(a), Entry::Report(b)) => a.table.cmp(&b.table),
        (Entry::Report(_), Entry::Unreadable(..)) => std::cmp::Ordering::Less,
        (Entry::Unreadable(..), Entry::Report(_)) => std::cmp::Ordering::Greater,
        (Entry::Unreadable(a, _), Entry::Unreadable(b, _)) => a.cmp(b),
    });
    Ok(entries)
}

/// Markdown table cells hold no `|` or line break.
fn cell_text(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The index's markdown.
fn render(entries: &[Entry]) -> String {
    let mut md = String::from(
        "# Results\n\nEvery table reported in this folder, rebuilt from the `*.summary.json` beside each report \
         whenever a report is written (`cargo xtask reproduce-table`).\n\n",
    );
    let _ = writeln!(md, "| table | title | cells run | our gain has the paper's sign | profile | report written |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for e in entries {
        match e {
            Entry::Report(s) => {
                let stem = s.table.stem();
                let sign = if s.cells_with_gain > 0 {
                    format!("{} of {}", s.same_sign, s.cells_with_gain)
                } else if s.table.is_paper() {
                    "— (no cell with both gains yet)".into()
                } else {
                    "— (no printed numbers)".into()
                };
                let written = s.written.get(..16).map_or_else(|| s.written.clone(), |d| format!("{} UTC", d.replace('T', " ")));
                let _ = writeln!(
                    md,
                    "| [{}]({stem}.md) ([figure]({stem}.svg)) | {} | {} of {} | {sign} | `{}` | {} |",
                    s.table.heading(),
                    cell_text(&s.title),
                    s.cells_run,
                    s.cells,
                    cell_text(&s.profile),
                    cell_text(&written)
                );
            }
            Entry::Unreadable(name, error) => {
                let _ = writeln!(md, "| `{}` | unreadable: {} | | | | |", cell_text(name), cell_text(error));
            }
        }
    }
    md.push_str(
        "\n\"Cells run\": cells with at least one finished run, of all the table's cells (cells our zoo cannot run \
         included). \"Our gain has the paper's sign\": of the cells where the paper prints a gain and we have one \
         (over our own baseline of the same row), those where the two gains have the same sign.\n",
    );
    md
}

/// Rewrites `<out>/README.md` from the summaries in `out`.
pub fn write_index(out: &Path) -> Result<()> {
    let md = render(&read_summaries(out)?);
    let path = out.join(INDEX);
    tfkd_runner::checkpoint::write_atomic(&path, md.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_counting_on_a_hand_made_case() {
        let gains = [
            (Some(1.3), Some(0.2)),   // same
            (Some(1.3), Some(-0.2)),  // opposite
            (Some(-0.04), Some(-2.0)), // same, both negative
            (Some(-0.04), Some(0.5)), // opposite
            (Some(0.5), Some(0.0)),   // zero is not positive
            (Some(0.5), None),        // not run: no gain
            (None, Some(0.5)),        // nothing printed
            (None, None),
        ];
        assert_eq!(sign_counts(gains), (5, 2));
        assert!(same_sign(0.0, 0.0) && !same_sign(0.0, 1e-9) && !same_sign(-1.0, 1.0));
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        let at = |s| utc_timestamp(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    /// An unreadable summary is named in the index and a warning; the other
    /// reports are still listed.
    #[test]
    fn an_unreadable_summary_is_listed_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let good = ReportSummary {
            table: TableId::Paper(9),
            title: "T | 9".into(),
            profile: "smoke".into(),
            cells: 16,
            cells_run: 3,
            cells_with_gain: 2,
            same_sign: 1,
            written: "2026-12-05T07:23:33Z".into(),
        };
        std::fs::write(summary_path(tmp.path(), "table-9"), serde_json::to_string(&good).unwrap()).unwrap();
        std::fs::write(summary_path(tmp.path(), "table-3"), "{ not json").unwrap();
        write_index(tmp.path()).unwrap();
        let md = std::fs::read_to_string(tmp.path().join(INDEX)).unwrap();
        assert!(
            md.contains("| [Table 9](table-9.md) ([figure](table-9.svg)) | T \\| 9 | 3 of 16 | 1 of 2 | `smoke` | 2026-12-05 07:23 UTC |"),
            "{md}"
        );
        assert!(md.contains("| `table-3.summary.json` | unreadable: "), "{md}");
    }
}
