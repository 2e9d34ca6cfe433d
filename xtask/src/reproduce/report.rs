//! The report of a reproduced table: `table-N.md` (paper and ours side by
//! side), `table-N.json` (every number), `table-N.svg` (the figure at the
//! top of the markdown: every cell, the paper's number and ours with its
//! spread over seeds, `figure.rs`), and an SVG of test accuracy against epoch
//! for every run, linked from the markdown. A table the paper does not print
//! (`ablation.md`/`.json`/`.svg`) opens with its `about` text and shows only
//! ours and our gain over its baseline cell.
//!
//! Each report also leaves `table-N.summary.json`, from which
//! `results/README.md`, the index of every table reported in the folder, is
//! rebuilt after every report (`index.rs`). Every file is written atomically.

use super::figure::{self, FigureCell};
use super::index::{self, ReportSummary};
use super::plan::{Measure, Plan, PlannedCell};
use super::profile::Profile;
use crate::tables::{self, Table};
use tfkd_distill::Method;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use tfkd_runner::{EpochRecord, Summary};

/// Mean, sample standard deviation and range over seeds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stat { mean, std: var.sqrt(), n, min, max })
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

/// Writes `bytes` to `path` atomically (a temporary file beside it, renamed).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    tfkd_runner::checkpoint::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The figure's cells: every cell of the table in its order (a cell that
/// cannot run shows the paper's number alone), with ours where it was run.
fn figure_cells<'a>(table: &'a Table, results: &[CellResult]) -> Vec<FigureCell<'a>> {
    table
        .cells
        .iter()
        .map(|c| FigureCell {
            row: &c.row,
            column: &c.column,
            paper: c.paper,
            paper_std: c.paper_std,
            ours: results.iter().find(|r| r.row == c.row && r.column == c.column).and_then(|r| r.best),
        })
        .collect()
}

/// Writes `table-N.md` (or `<name>.md`), its `.json`, `.svg` and
/// `.summary.json` and the run plots under `out`, then rebuilds
/// `out/README.md`.
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

    let stem = table.table.stem();
    let heading = table.table.heading();
    let versus = if printed { "paper vs tfkd" } else { "tfkd" };
    let title = format!("{heading}: {} ({versus}, profile {})", table.title, profile_name(profile));
    let figure = figure::render(&title, &figure_cells(table, &results))?;
    write_file(&out.join(format!("{stem}.svg")), figure.as_bytes())?;
    let (with_gain, same_sign) = index::sign_counts(results.iter().map(|r| (r.paper_gain, r.gain)));
    let cells_run = results.iter().filter(|r| r.best.is_some()).count();

    let mut md = String::new();
    let _ = writeln!(md, "# {heading}: {}\n", table.title);
    let caption = if printed { figure::CAPTION } else { figure::CAPTION_OURS };
    let caption = caption.iter().filter(|l| !l.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let _ = writeln!(md, "![{heading}: {versus}]({stem}.svg)\n\n*{caption}*\n\n> {}\n", table.caption);
    if let Some(about) = &table.about {
        let _ = writeln!(md, "{}\n", about.trim());
    }
    let data = profile.data(table.dataset);
    let _ = writeln!(md, "Profile `{:?}`: {}.\n", profile.name, describe(profile, table, &data.note));
    let _ = write!(md, "{cells_run} of {} cells run", table.cells.len());
    if printed {
        let _ = write!(md, "; our gain has the paper's sign in {same_sign} of the {with_gain} cells with both gains");
    }
    let _ = writeln!(md, ".\n");
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
            (Some(p), Some(o)) if index::same_sign(p, o) => "yes",
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
            write_file(&plots.join(format!("{run}.svg")), svg(run, &history).as_bytes())?;
        }
    }
    write_file(&out.join(format!("{stem}.md")), md.as_bytes())?;
    let json = serde_json::json!({ "table": table.table, "title": table.title, "profile": profile, "data": data, "cells": results });
    write_file(&out.join(format!("{stem}.json")), serde_json::to_string_pretty(&json)?.as_bytes())?;
    let summary = ReportSummary {
        table: table.table.clone(),
        title: table.title.clone(),
        profile: profile_name(profile),
        cells: table.cells.len(),
        cells_run,
        cells_with_gain: with_gain,
        same_sign,
        written: index::utc_timestamp(std::time::SystemTime::now()),
    };
    write_file(&index::summary_path(out, &stem), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    index::write_index(out)?;
    Ok(results)
}

/// The profile's name as the command line spells it (`quick`).
fn profile_name(profile: &Profile) -> String {
    tables::config_name(&profile.name)
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
    let kind = profile.data(table.dataset).kind;
    let in_table = |m: &str| {
        table.cells.iter().any(|c| {
            profile.model(&c.student, kind) == m || c.teacher.as_deref().is_some_and(|t| profile.model(t, kind) == m)
        })
    };
    if let Some(e) = profile.epochs {
        let milestones = if profile.single_decay { "" } else { " (milestones scaled in proportion)" };
        let exceptions: Vec<String> = profile
            .epochs_exceptions
            .iter()
            .filter_map(|x| {
                let models: Vec<&str> = x.models.iter().copied().filter(|m| in_table(m)).collect();
                (!models.is_empty()).then(|| format!("{} train {} ({})", models.join(" and "), x.epochs, x.why))
            })
            .collect();
        let except = if exceptions.is_empty() { String::new() } else { format!("; {}", exceptions.join("; ")) };
        parts.push(format!("{e} epochs instead of {}{milestones}{except}", table.recipe.epochs));
    }
    if let Some(note) = profile.recipe_note {
        parts.push(note.to_string());
    }
    if profile.width_divisor > 1 {
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

#[cfg(test)]
mod tests {
    use super::super::index;
    use super::super::plan::{self, Shared};
    use super::super::profile::ProfileName;
    use super::*;
    use crate::tables::TableId;
    use tfkd_runner::device::DeviceSpec;

    /// A finished run in `dir` whose test top-1 ends at `top1` (the best
    /// and last epoch): `summary.json` and `metrics.jsonl`, as a run writes
    /// them.
    fn fake_run(dir: &Path, epochs: usize, top1: f64) {
        std::fs::create_dir_all(dir).unwrap();
        let record = |epoch: usize| EpochRecord {
            epoch,
            test_top1: top1 - (epochs - epoch) as f64,
            train_top1: top1,
            ..EpochRecord::default()
        };
        let lines: Vec<String> = (1..=epochs).map(|e| serde_json::to_string(&record(e)).unwrap()).collect();
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        let summary = Summary {
            run: dir.file_name().unwrap().to_string_lossy().into_owned(),
            model: "m".into(),
            dataset: "d".into(),
            method: "baseline".into(),
            seed: 0,
            epochs,
            best: record(epochs),
            last: record(epochs),
            teacher_top1: None,
        };
        std::fs::write(dir.join("summary.json"), serde_json::to_string(&summary).unwrap()).unwrap();
    }

    /// Reports table `id` under `out` (smoke profile, `seeds` seeds), after
    /// writing a finished run for every seed of every cell that `top1`
    /// gives a value for (`top1(row, column, seed index)`).
    fn report(
        id: TableId,
        out: &Path,
        seeds: usize,
        top1: impl Fn(&str, &str, usize) -> Option<f64>,
    ) -> (Table, Vec<CellResult>) {
        let table = tables::load(&id).unwrap();
        let profile = Profile::new(ProfileName::Smoke, &out.join("no-data-here"));
        let runs_dir = plan::runs_dir(out, &profile);
        let shared = Shared { profile: &profile, device: DeviceSpec::Cpu, precision: Default::default(), runs_dir: &runs_dir, seeds: Some(seeds), replicas: 1 };
        let plan = Plan::build(std::slice::from_ref(&table), &shared).unwrap();
        for cell in &plan.cells {
            for (seed, run) in cell.runs.iter().enumerate() {
                if let Some(v) = top1(&cell.row, &cell.column, seed) {
                    fake_run(&runs_dir.join(run), plan.runs[run].config.epochs, v);
                }
            }
        }
        let results = write(&table, &plan, &profile, &runs_dir, out).unwrap();
        (table, results)
    }

    /// The text of every `<text>` element of an SVG, unescaped.
    fn svg_texts(svg: &str) -> Vec<String> {
        let mut texts = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find("<text") {
            rest = &rest[start..];
            let open = rest.find('>').unwrap() + 1;
            let close = rest.find("</text>").unwrap();
            let raw = rest[open..close].trim();
            texts.push(
                raw.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            );
            rest = &rest[close..];
        }
        texts
    }

    fn hex(c: plotters::prelude::RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// Markers of a series: its circles (ours) or polygons (the paper's)
    /// filled with its colour; one of each is the legend's.
    fn markers(svg: &str, element: &str, color: plotters::prelude::RGBColor) -> usize {
        let fill = format!("fill=\"{}\"", hex(color));
        svg.lines().filter(|l| l.starts_with(&format!("<{element} ")) && l.contains(&fill)).count()
    }

    #[test]
    fn the_figure_shows_every_cell_with_both_series() {
        let tmp = tempfile::tempdir().unwrap();
        let (table, results) = report(TableId::Paper(9), tmp.path(), 2, |row, column, seed| {
            Some(40.0 + row.len() as f64 + column.len() as f64 + 3.0 * seed as f64)
        });
        let svg = std::fs::read_to_string(tmp.path().join("table-9.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        let texts = svg_texts(&svg);
        assert!(texts.iter().any(|t| t.starts_with("Table 9: ") && t.contains("paper vs tfkd")), "{texts:?}");
        for cell in &table.cells {
            assert!(texts.contains(&cell.row), "row {:?} not in the figure: {texts:?}", cell.row);
            assert!(texts.contains(&cell.column), "column {:?} not in the figure: {texts:?}", cell.column);
        }
        // Every cell has a printed number and a result: one marker of each
        // series per cell, plus the legend's.
        let printed = table.cells.iter().filter(|c| c.paper.is_some()).count();
        assert_eq!(printed, table.cells.len());
        assert_eq!(markers(&svg, "polygon", figure::PAPER_COLOR), printed + 1, "paper markers");
        assert_eq!(markers(&svg, "circle", figure::OURS_COLOR), results.len() + 1, "our markers");
        // Two seeds 3 points apart: a min–max bar per cell (and the legend's).
        let bars = svg.lines().filter(|l| l.starts_with("<polyline") && l.contains(&hex(figure::OURS_COLOR)) && l.contains("stroke-width=\"3\"")).count();
        assert_eq!(bars, results.len() + 1);
        assert!(results.iter().all(|r| r.best.is_some_and(|b| b.n == 2 && (b.max - b.min - 3.0).abs() < 1e-9)));
        // The markdown opens with the figure.
        let md = std::fs::read_to_string(tmp.path().join("table-9.md")).unwrap();
        let mut lines = md.lines().filter(|l| !l.is_empty());
        assert!(lines.next().unwrap().starts_with("# Table 9: "), "{md}");
        assert_eq!(lines.next(), Some("![Table 9: paper vs tfkd](table-9.svg)"), "{md}");
        assert!(md.contains("min–max over seeds"), "the caption says what the bar is:\n{md}");
    }

    /// Cells without a finished run (and cells that cannot run) show the
    /// paper's marker alone, and the figure is still drawn.
    #[test]
    fn a_report_with_missing_results_still_renders() {
        let tmp = tempfile::tempdir().unwrap();
        // Table 4 has cells measured after an epoch (the Pt-Teacher) and
        // Tiny-ImageNet rows; only the first row's cells get a run.
        let first = tables::load(&TableId::Paper(4)).unwrap().cells[0].row.clone();
        let (table, results) = report(TableId::Paper(4), tmp.path(), 1, |row, _, _| (row == first).then_some(61.5));
        let run = results.iter().filter(|r| r.best.is_some()).count();
        assert!(run > 0 && run < table.cells.len(), "{run} of {} cells run", table.cells.len());
        let svg = std::fs::read_to_string(tmp.path().join("table-4.svg")).unwrap();
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        let printed = table.cells.iter().filter(|c| c.paper.is_some()).count();
        assert_eq!(markers(&svg, "polygon", figure::PAPER_COLOR), printed + 1);
        assert_eq!(markers(&svg, "circle", figure::OURS_COLOR), run + 1);
        let texts = svg_texts(&svg);
        assert!(table.cells.iter().all(|c| texts.contains(&c.row) && texts.contains(&c.column)), "{texts:?}");

        // Nothing run at all, and a table with no printed number: still a figure.
        let empty = tempfile::tempdir().unwrap();
        report(TableId::Extra("ablation".into()), empty.path(), 1, |_, _, _| None);
        let svg = std::fs::read_to_string(empty.path().join("ablation.svg")).unwrap();
        assert_eq!(markers(&svg, "circle", figure::OURS_COLOR), 1, "the legend's only");
        assert_eq!(markers(&svg, "polygon", figure::PAPER_COLOR), 0, "the paper prints nothing here");
        let md = std::fs::read_to_string(empty.path().join("ablation.md")).unwrap();
        assert!(md.starts_with("# Ablation: ") && md.contains("![Ablation: tfkd](ablation.svg)"), "{md}");
    }

    /// Two tables reported by two separate calls both appear in the index,
    /// with their own counts.
    #[test]
    fn the_index_lists_tables_reported_separately() {
        let tmp = tempfile::tempdir().unwrap();
        // Table 8 (one row, printed gains +0.58 and +0.56): Tf-KD_self gains
        // 1 point over our baseline, Normal KD loses 1.
        let (t8, _) = report(TableId::Paper(8), tmp.path(), 1, |_, column, _| match column {
            "Baseline" => Some(70.0),
            "Tf-KD_self" => Some(71.0),
            _ => Some(69.0),
        });
        assert!(t8.cells.iter().filter_map(|c| c.paper_gain).all(|g| g > 0.0));
        let first = std::fs::read_to_string(tmp.path().join(index::INDEX)).unwrap();
        assert!(first.contains("| [Table 8](table-8.md) ([figure](table-8.svg)) | "), "{first}");
        assert!(!first.contains("Table 9"), "{first}");

        // Table 9, only its ResNet18 row run (printed gains all positive):
        // Tf-KD_reg and Normal KD gain, + LSR loses.
        let (t9, _) = report(TableId::Paper(9), tmp.path(), 1, |row, column, _| {
            (row == "ResNet18").then_some(match column {
                "Baseline" => 60.0,
                "+ LSR" => 59.5,
                _ => 62.0,
            })
        });
        assert!(t9.cells.iter().filter(|c| c.row == "ResNet18").filter_map(|c| c.paper_gain).all(|g| g > 0.0));
        let md = std::fs::read_to_string(tmp.path().join(index::INDEX)).unwrap();
        let line = |stem: &str| md.lines().find(|l| l.starts_with(&format!("| [Table {}]({stem}.md)", &stem[6..]))).unwrap_or("");
        let (l8, l9) = (line("table-8"), line("table-9"));
        assert!(l8.contains(" | 3 of 3 | 1 of 2 | `smoke` | "), "{md}");
        assert!(l9.contains(&format!(" | 4 of {} | 2 of 3 | `smoke` | ", t9.cells.len())), "{md}");
        assert!(md.find(l8).unwrap() < md.find(l9).unwrap(), "tables in order:\n{md}");
        // The date of each report, as written in its summary.
        let written = |stem: &str| -> String {
            let text = std::fs::read_to_string(index::summary_path(tmp.path(), stem)).unwrap();
            serde_json::from_str::<index::ReportSummary>(&text).unwrap().written
        };
        for (stem, l) in [("table-8", l8), ("table-9", l9)] {
            let w = written(stem);
            assert!(l.contains(&format!("{} {} UTC", &w[..10], &w[11..16])), "{stem}: {w} not in {l}");
        }
        // The report itself says the same.
        let md9 = std::fs::read_to_string(tmp.path().join("table-9.md")).unwrap();
        assert!(md9.contains("4 of 16 cells run; our gain has the paper's sign in 2 of the 3 cells with both gains."), "{md9}");
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
