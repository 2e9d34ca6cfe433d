//! The figure of a table report (`table-N.svg`): for every cell, the paper's
//! number and ours with its spread over seeds, one cell a line, drawn with
//! plotters' SVG backend (text is written as SVG `<text>`, so no font file
//! or native library is needed).
//!
//! Cells are grouped by the table's row label: a bold heading line per row,
//! then one line per cell labelled with its column, on alternately shaded
//! bands. Accuracy runs along the x axis, so a long table (Table 4's 36
//! cells) only grows taller.

use super::report::Stat;
use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;

/// What one cell of the figure shows.
#[derive(Clone, Debug)]
pub struct FigureCell<'a> {
    /// The table's row label: cells are grouped under it.
    pub row: &'a str,
    /// The column label: the cell's line on the y axis.
    pub column: &'a str,
    /// The printed number.
    pub paper: Option<f64>,
    /// The printed std.
    pub paper_std: Option<f64>,
    /// Ours over seeds; none when no run has finished.
    pub ours: Option<Stat>,
}

/// The colour of the paper's markers (a diamond; a thin bar: ± printed std).
pub const PAPER_COLOR: RGBColor = RGBColor(0xd9, 0x5f, 0x02);
/// The colour of ours (a dot: the mean over seeds; a thick bar: min–max).
pub const OURS_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);

/// What the markers mean, in the lines the figure prints under its
/// legend; the markdown report prints them under the figure.
pub const CAPTION: [&str; 2] = [
    "Test top-1 (%) at the best epoch. tfkd: dot = mean over seeds, bar = min–max over seeds; a cell with one seed is a dot alone.",
    "Paper: diamond = the printed number, thin bar = ± the printed std where printed. A cell without a finished run shows the paper's diamond only.",
];

/// The caption of a table the paper does not print (ours only).
pub const CAPTION_OURS: [&str; 2] =
    ["Test top-1 (%) at the best epoch. tfkd: dot = mean over seeds, bar = min–max over seeds; a cell with one seed is a dot alone.", ""];

const FONT: &str = "sans-serif";
/// Pixels per line (a cell or a row heading).
const LINE: u32 = 20;
const WIDTH: u32 = 900;
const HEADER: u32 = 78;
const X_AXIS: u32 = 44;

enum Line<'c, 'a> {
    Heading(&'a str),
    Cell(&'c FigureCell<'a>),
}

/// The cells in table order, grouped by row (a row's cells stay in their
/// table order, under the row's first appearance).
fn lines<'c, 'a>(cells: &'c [FigureCell<'a>]) -> Vec<Line<'c, 'a>> {
    let mut rows: Vec<&str> = Vec::new();
    for c in cells {
        if !rows.contains(&c.row) {
            rows.push(c.row);
        }
    }
    let mut lines = Vec::new();
    for row in rows {
        lines.push(Line::Heading(row));
        lines.extend(cells.iter().filter(|c| c.row == row).map(Line::Cell));
    }
    lines
}

/// Ours, if it has a finite mean.
fn ours(c: &FigureCell) -> Option<Stat> {
    c.ours.filter(|s| s.mean.is_finite())
}

/// The x range: every value drawn, padded, within 0–100.
fn x_range(cells: &[FigureCell]) -> (f64, f64) {
    let mut values = Vec::new();
    for c in cells {
        if let Some(p) = c.paper {
            let s = c.paper_std.unwrap_or(0.0);
            values.extend([p - s, p + s]);
        }
        if let Some(o) = ours(c) {
            values.extend([o.mean, o.min, o.max]);
        }
    }
    values.retain(|v| v.is_finite());
    let (Some(lo), Some(hi)) = (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max)) else {
        return (0.0, 100.0);
    };
    let pad = ((hi - lo) * 0.06).max(1.0);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(100.0));
    if hi - lo < 2.0 {
        ((lo - 1.0).max(0.0), (hi + 1.0).min(100.0))
    } else {
        (lo, hi)
    }
}

/// The y axis: one line per heading or cell, from -0.5 to `n` - 0.5, with
/// ticks (and labels) at the cells' lines only.
struct LineAxis {
    n: usize,
    ticks: Vec<f64>,
}

impl Ranged for LineAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let t = (value + 0.5) / self.n as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.n as f64 - 0.5
    }
}

fn diamond(x: i32, y: i32, r: i32, style: ShapeStyle) -> Polygon<(i32, i32)> {
    Polygon::new(vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)], style)
}

/// The figure as SVG text. `title` heads it; `cells` in table order.
pub fn render(title: &str, cells: &[FigureCell]) -> Result<String> {
    let lines = lines(cells);
    let n = lines.len().max(1);
    let height = HEADER + X_AXIS + 16 + LINE * n as u32;
    // Wide enough for the right-aligned column labels and the bold row
    // headings (about 7 and 8 pixels a character at these sizes, with room
    // for the ticks).
    let longest = |f: fn(&FigureCell) -> usize| cells.iter().map(f).max().unwrap_or(0) as u32;
    let label_area = (longest(|c| c.column.chars().count()) * 7 + 30)
        .max(longest(|c| c.row.chars().count()) * 8 + 16)
        .clamp(110, 400);
    let (lo, hi) = x_range(cells);
    let printed = cells.iter().any(|c| c.paper.is_some());

    let mut svg = String::new();
    {
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing the figure {title:?}: {e}");
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (top, body) = root.split_vertically(HEADER);

        // Title, legend and caption.
        top.draw(&Text::new(title.to_string(), (12, 8), (FONT, 17).into_font().style(FontStyle::Bold)))
            .map_err(|e| err(&e))?;
        let legend_y = 36;
        let mut x = 14;
        if printed {
            top.draw(&PathElement::new(vec![(x - 8, legend_y), (x + 8, legend_y)], PAPER_COLOR.stroke_width(1)))
                .map_err(|e| err(&e))?;
            top.draw(&diamond(x, legend_y, 5, PAPER_COLOR.filled())).map_err(|e| err(&e))?;
            top.draw(&Text::new("paper (± printed std)", (x + 14, legend_y - 7), (FONT, 14))).map_err(|e| err(&e))?;
            x += 190;
        }
        top.draw(&PathElement::new(vec![(x - 9, legend_y), (x + 9, legend_y)], OURS_COLOR.stroke_width(3)))
            .map_err(|e| err(&e))?;
        top.draw(&Circle::new((x, legend_y), 4, OURS_COLOR.filled())).map_err(|e| err(&e))?;
        top.draw(&Text::new("tfkd (mean over seeds; bar: min–max)", (x + 16, legend_y - 7), (FONT, 14)))
            .map_err(|e| err(&e))?;
        let caption = if printed { CAPTION } else { CAPTION_OURS };
        for (i, text) in caption.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let style = (FONT, 12).into_font().color(&RGBColor(0x55, 0x55, 0x55));
            top.draw(&Text::new(text.to_string(), (12, 50 + 13 * i as i32), style)).map_err(|e| err(&e))?;
        }

        // One y line per heading or cell, the first at the top.
        let y_of = |i: usize| (n - 1 - i) as f64;
        let keys: Vec<f64> = lines.iter().enumerate().filter(|(_, l)| matches!(l, Line::Cell(_))).map(|(i, _)| y_of(i)).collect();
        let label_of = |y: f64| -> String {
            let i = n as i64 - 1 - y.round() as i64;
            match usize::try_from(i).ok().and_then(|i| lines.get(i)) {
                Some(Line::Cell(c)) => c.column.to_string(),
                _ => String::new(),
            }
        };
        let mut chart = ChartBuilder::on(&body)
            .margin_right(24)
            .margin_top(6)
            .margin_bottom(10)
            .x_label_area_size(X_AXIS)
            .y_label_area_size(label_area)
            .build_cartesian_2d(lo..hi, LineAxis { n, ticks: keys })
            .map_err(|e| err(&e))?;

        // Alternately shaded bands, one per row of the table.
        let mut band = Vec::new();
        let mut start = 0;
        for (i, line) in lines.iter().enumerate().skip(1) {
            if matches!(line, Line::Heading(_)) {
                band.push((start, i - 1));
                start = i;
            }
        }
        band.push((start, lines.len().saturating_sub(1)));
        chart
            .draw_series(band.iter().enumerate().filter(|(k, _)| k % 2 == 0).map(|(_, &(a, b))| {
                Rectangle::new([(lo, y_of(a) + 0.5), (hi, y_of(b) - 0.5)], RGBColor(0xf2, 0xf2, 0xf2).filled())
            }))
            .map_err(|e| err(&e))?;

        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("test top-1 (%)")
            .x_label_formatter(&|v| if hi - lo > 10.0 { format!("{v:.0}") } else { format!("{v:.1}") })
            .y_label_formatter(&|y| label_of(*y))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .bold_line_style(RGBColor(0xcc, 0xcc, 0xcc).stroke_width(1))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(|e| err(&e))?;

        // Row headings, left-aligned in the label area (their lines hold no data).
        let left = root.get_base_pixel().0 + 10;
        for (i, line) in lines.iter().enumerate() {
            if let Line::Heading(row) = line {
                let (_, py) = chart.backend_coord(&(lo, y_of(i)));
                let style = TextStyle::from((FONT, 15).into_font().style(FontStyle::Bold)).pos(Pos::new(HPos::Left, VPos::Center));
                root.draw(&Text::new(row.to_string(), (left, py), style)).map_err(|e| err(&e))?;
            }
        }

        // The markers: the paper's just above the line, ours just below.
        let offset = 0.2;
        for (i, line) in lines.iter().enumerate() {
            let Line::Cell(c) = line else { continue };
            let y = y_of(i);
            if let Some(p) = c.paper.filter(|p| p.is_finite()) {
                if let Some(s) = c.paper_std.filter(|s| *s > 0.0) {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![((p - s).max(lo), y + offset), ((p + s).min(hi), y + offset)],
                            PAPER_COLOR.stroke_width(1),
                        )))
                        .map_err(|e| err(&e))?;
                }
                chart
                    .draw_series(std::iter::once(EmptyElement::at((p, y + offset)) + diamond(0, 0, 5, PAPER_COLOR.filled())))
                    .map_err(|e| err(&e))?;
            }
            if let Some(o) = ours(c) {
                if o.n > 1 && o.max > o.min {
                    let (a, b) = (o.min.max(lo), o.max.min(hi));
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(a, y - offset), (b, y - offset)],
                            OURS_COLOR.stroke_width(3),
                        )))
                        .map_err(|e| err(&e))?;
                    for end in [a, b] {
                        chart
                            .draw_series(std::iter::once(
                                EmptyElement::at((end, y - offset))
                                    + PathElement::new(vec![(0, -4), (0, 4)], OURS_COLOR.stroke_width(2)),
                            ))
                            .map_err(|e| err(&e))?;
                    }
                }
                chart
                    .draw_series(std::iter::once(Circle::new((o.mean, y - offset), 4, OURS_COLOR.filled())))
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
