//! The report of a reproduced table: `table-N.md` (paper and ours side by
//! side), `table-N.json` (every number), and an SVG of test accuracy against
//! epoch for every run, linked from the markdown. A table the paper does not
//! print (`ablation.md`/`.json`) opens with its `about` text and shows only
//! ours and our gain over its baseline cell.

use super::plan::{Measure, Plan, PlannedCell};
use super::profile::Profile;
use crate::tables::Table;
use tfkd_distill::Method;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use tfkd_runner::{EpochRecord, Summary};

/// Mean and sample standard deviation.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        Some(Stat { mean, std: var.sqrt(), n })
    }

    fn show(&self) -> String {
        if self.n > 1 { format!("{:.2}±{:.2}", self.mean, self.std) } else { format!("{:.2}", self.mean) }
    }
}

/// One cell's numbers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CellResult {
    /// Row label.
    pub row: String,
    /// Column label.
    pub column: String,
    /// Method (its config name in the JSON).
    pub method: Method,
    /// The printed number.
    pub paper: Option<f64>,
    /// The printed std.
    pub paper_std: Option<f64>,
    /// The printed gain.
    pub paper_gain: Option<f64>,
    /// Ours, best epoch, over seeds.
    pub best: Option<Stat>,
    /// Ours, last epoch, over seeds.
    pub last: Option<Stat>,
    /// Our gain (best) over our baseline of the same row.
    pub gain: Option<f64>,
    /// Runs behind it.
    pub runs: Vec<String>,
}

/// A finished run's summary; an unfinished run counts as not run, and so
/// does an unreadable one, with a warning that names the file.
fn read_summary(dir: &Path) -> Option<Summary> {
    tfkd_runner::run_dir::read_summary(dir).unwrap_or_else(|e| {
        eprintln!("warning: {e}; the run counts as unfinished (`--resume` writes the summary again)");
        None
    })
}

/// A run's per-epoch records; none when it has not started, and none with a
/// warning that names the file when they are unreadable.
fn read_history(dir: &Path) -> Vec<EpochRecord> {
    tfkd_runner::run_dir::read_metrics(dir).unwrap_or_else(|e| {
        eprintln!("warning: {e}; the report shows no curve for this run");
        Vec::new()
    })
}

fn measure(cell: &PlannedCell, runs_dir: &Path) -> (Option<Stat>, Option<Stat>) {
    let (mut best, mut last) = (Vec::new(), Vec::new());
    for run in &cell.runs {
        let dir = runs_dir.join(run);
        match cell.measure {
            Measure::Final => {
                if let Some(s) = read_summary(&dir) {
                    best.push(s.best.test_top1);
                    last.push(s.last.test_top1);
                }
            }
            Measure::AfterEpoch(e) => {
                if let Some(r) = read_history(&dir).get(e - 1) {
                    best.push(r.test_top1);
                    last.push(r.test_top1);
                }
            }
        }
    }
    (Stat::of(&best), Stat::of(&last))
}

/// A line chart of test top-1 against epoch.
fn svg(title: &str, history: &[EpochRecord]) -> String {
    let (w, h, m) = (480.0, 300.0, 40.0);
    let n = history.len().max(2) as f64;
    let x = |e: f64| m + (e - 1.0) / (n - 1.0) * (w - 2.0 * m);
    let y = |acc: f64| h - m - acc / 100.0 * (h - 2.0 * m);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{m}\" y=\"20\">{}</text>\n",
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    for acc in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let (x2, yy) = (w - m, y(acc));
        let _ = writeln!(s, "<line x1=\"{m}\" x2=\"{x2}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"4\" y=\"{yy}\">{acc}%</text>");
    }
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\">epoch ({} in all)</text>", w / 2.0 - 30.0, h - 8.0, history.len());
    for (key, color) in [("test", "#1f77b4"), ("train", "#ff7f0e")] {
        let points: Vec<String> = history
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.epoch as f64), y(if key == "test" { r.test_top1 } else { r.train_top1 })))
            .collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
    }
    let _ = writeln!(s, "<text x=\"{}\" y=\"20\" fill=\"#1f77b4\">test top-1</text><text x=\"{}\" y=\"34\" fill=\"#ff7f0e\">train top-1</text>", w - 120.0, w - 120.0);
    s.push_str("</svg>\n");
    s
}

/// Writes `table-N.md` (or `<name>.md`), its `.json` and the run plots under `out`.
pub fn write(table: &Table, plan: &Plan, profile: &Profile, runs_dir: &Path, out: &Path) -> Result<Vec<CellResult>> {
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let cells: Vec<&PlannedCell> = plan.cells.iter().filter(|c| c.table == table.table).collect();
    let printed = table.table.is_paper();
    let mut results = Vec::new();
    for pc in &cells {
        let cell = table.cell(&pc.row, &pc.column).context("planned cell not in table")?;
        let (best, last) = measure(pc, runs_dir);
        results.push(CellResult {
            row: pc.row.clone(),
            column: pc.column.clone(),
            method: cell.method,
            paper: cell.paper,
            paper_std: cell.paper_std,
            paper_gain: cell.paper_gain,
            best,
            last,
            gain: None,
            runs: pc.runs.clone(),
        });
    }
    // Our gain: best mean minus the best mean of the row's baseline cell.
    let baselines: Vec<(String, String, f64)> = results
        .iter()
        .filter_map(|r| {
            let cell = table.cell(&r.row, &r.column)?;
            let base = table.baseline_of(cell)?;
            let b = results.iter().find(|x| x.row == base.row && x.column == base.column)?;
            Some((r.row.clone(), r.column.clone(), b.best?.mean))
        })
        .collect();
    for r in &mut results {
        let is_baseline = table.cell(&r.row, &r.column).is_some_and(|c| c.method == Method::Baseline);
        if let (Some(best), false) = (r.best, is_baseline) {
            r.gain = baselines.iter().find(|(row, col, _)| *row == r.row && *col == r.column).map(|(_, _, b)| best.mean - b);
        }
    }

    let mut md = String::new();
    let _ = writeln!(md, "# {}: {}\n\n> {}\n", table.table.heading(), table.title, table.caption);
    if let Some(about) = &table.about {
        let _ = writeln!(md, "{}\n", about.trim());
    }
    let data = profile.data(table.dataset);
    let _ = writeln!(md, "Profile `{:?}`: {}.\n", profile.name, describe(profile, table, &data.note));
    if printed {
        let _ = writeln!(md, "| row | column | paper | ours (best) | ours (last) | ours − paper | paper gain | our gain | same sign |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    } else {
        let _ = writeln!(md, "| row | column | ours (best) | ours (last) | our gain |");
        let _ = writeln!(md, "|---|---|---|---|---|");
    }
    for r in &results {
        let show = |s: Option<Stat>| s.map(|s| s.show()).unwrap_or_else(|| "not run".into());
        let og = r.gain.map(|g| format!("{g:+.2}")).unwrap_or_else(|| "—".into());
        let links: Vec<String> = r.runs.iter().map(|run| format!("[{}](plots/{run}.svg)", short(run))).collect();
        let ours = format!("{} {}", show(r.best), links.join(" "));
        if !printed {
            let _ = writeln!(md, "| {} | {} | {ours} | {} | {og} |", r.row, r.column, show(r.last));
            continue;
        }
        let paper = match (r.paper, r.paper_std) {
            (Some(p), Some(s)) => format!("{p:.2}±{s:.2}"),
            (Some(p), None) => format!("{p:.2}"),
            _ => "—".into(),
        };
        let diff = match (r.best, r.paper) {
            (Some(b), Some(p)) => format!("{:+.2}", b.mean - p),
            _ => "—".into(),
        };
        let pg = r.paper_gain.map(|g| format!("{g:+.2}")).unwrap_or_else(|| "—".into());
        let sign = match (r.paper_gain, r.gain) {
            (Some(p), Some(o)) if (p > 0.0) == (o > 0.0) => "yes",
            (Some(_), Some(_)) => "**no**",
            _ => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {paper} | {ours} | {} | {diff} | {pg} | {og} | {sign} |",
            r.row,
            r.column,
            show(r.last)
        );
    }
    let skipped: Vec<_> = plan.skipped.iter().filter(|s| s.0 == table.table).collect();
    if !skipped.is_empty() {
        let _ = writeln!(md, "\nNot run:\n");
        for (_, row, col, why) in skipped {
            let _ = writeln!(md, "- {row} / {col}: {why}");
        }
    }
    let _ = writeln!(md, "\n## Notes from the table's data\n");
    for note in &table.notes {
        let _ = writeln!(md, "- {note}");
    }
    let _ = writeln!(
        md,
        "\n\"Best\" is the highest test top-1 over epochs (the official code's `best.pth.tar`), \"last\" the final epoch; \
         mean ± sample std over seeds. \"Our gain\" is over our own baseline of the same row, {}",
        if printed {
            "so that the paper's qualitative claim (the sign of the gain) can be checked at any scale."
        } else {
            "trained with the same recipe and seeds; the paper prints no number for this table."
        }
    );
    for run in plan.cells.iter().filter(|c| c.table == table.table).flat_map(|c| &c.runs) {
        let history = read_history(&runs_dir.join(run));
        if !history.is_empty() {
            std::fs::write(plots.join(format!("{run}.svg")), svg(run, &history))?;
        }
    }
    let stem = table.table.stem();
    std::fs::write(out.join(format!("{stem}.md")), md)?;
    let json = serde_json::json!({ "table": table.table, "title": table.title, "profile": profile, "data": data, "cells": results });
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?)?;
    Ok(results)
}

fn short(run: &str) -> String {
    run.rsplit('-').next().unwrap_or(run).to_string()
}

/// What the profile scaled, in words.
pub fn describe(profile: &Profile, table: &Table, data_note: &Option<String>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = data_note {
        parts.push(n.clone());
    }
    if let Some(e) = profile.epochs {
        let milestones = if profile.single_decay { "" } else { " (milestones scaled in proportion)" };
        parts.push(format!("{e} epochs instead of {}{milestones}", table.recipe.epochs));
    }
    if let Some(note) = profile.recipe_note {
        parts.push(note.to_string());
    }
    if profile.width_divisor > 1 {
        let kind = profile.data(table.dataset).kind;
        let in_table = |m: &str| {
            table.cells.iter().any(|c| {
                profile.model(&c.student, kind) == m || c.teacher.as_deref().is_some_and(|t| profile.model(t, kind) == m)
            })
        };
        let exceptions: Vec<String> = profile
            .width_exceptions
            .iter()
            .filter(|e| in_table(e.model))
            .map(|e| format!("{} ÷{} ({})", e.model, e.width_divisor, e.why))
            .collect();
        let except = if exceptions.is_empty() { String::new() } else { format!(", except {}", exceptions.join(" and ")) };
        parts.push(format!(
            "every network's channel counts divided by {} (same depth and structure){except}",
            profile.width_divisor
        ));
    }
    if profile.train_subset > 0 {
        parts.push(format!("at most {} training and {} test images", profile.train_subset, profile.test_subset));
    }
    if let Some(b) = profile.batch_size {
        parts.push(format!("batch size {b} (learning rate scaled by batch/128 as the official code does)"));
    }
    if let Some(caveat) = profile.caveat {
        parts.push(format!("caveat: {caveat}"));
    }
    if parts.is_empty() {
        "the paper's recipe, unscaled".into()
    } else {
        parts.join("; ")
    }
}
