//! Bar charts of tokens/s as SVG, for `cargo xtask compare`.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar: a mean and its standard deviation, drawn as an error bar.
pub struct Bar {
    pub label: String,
    /// Index into the palette, so that a backend keeps its colour from chart to chart.
    pub color: usize,
    pub mean: f64,
    pub stddev: f64,
}

/// seaborn's "deep" palette: distinct, and readable in print.
const PALETTE: [RGBColor; 6] = [
    RGBColor(76, 114, 176),
    RGBColor(221, 132, 82),
    RGBColor(85, 168, 104),
    RGBColor(196, 78, 82),
    RGBColor(129, 114, 179),
    RGBColor(147, 120, 96),
];

/// One chart of the row: a test (e.g. pp256) across backends.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// Draws `panels` side by side under `caption`, into an SVG file at `path`.
pub fn write_svg(path: &Path, caption: &str, panels: &[Panel]) -> Result<()> {
    let width = 440 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 18))?;
    for (area, panel) in root
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        draw_panel(area, panel)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Room above the tallest error bar for its value label.
    let top = panel
        .bars
        .iter()
        .map(|bar| bar.mean + bar.stddev)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 16))
        .margin(14)
        .x_label_area_size(30)
        .y_label_area_size(64)
        // Integer ranges are inclusive in plotters: 0..n-1 is n segments.
        .build_cartesian_2d(
            (0..panel.bars.len().saturating_sub(1)).into_segmented(),
            0.0..top,
        )?;
    let label_of = |x: &SegmentValue<usize>| match x {
        SegmentValue::CenterOf(i) => panel
            .bars
            .get(*i)
            .map_or(String::new(), |bar| bar.label.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("tokens/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&label_of)
        .draw()?;

    let bars = || panel.bars.iter().enumerate();
    chart.draw_series(bars().map(|(i, bar)| {
        let corners = [
            (SegmentValue::Exact(i), 0.0),
            (SegmentValue::Exact(i + 1), bar.mean),
        ];
        let mut rectangle = Rectangle::new(corners, PALETTE[bar.color % PALETTE.len()].filled());
        rectangle.set_margin(0, 0, 14, 14);
        rectangle
    }))?;
    // ± one standard deviation: a line with 12-pixel caps.
    let whisker = |i: usize, y: f64| {
        EmptyElement::at((SegmentValue::CenterOf(i), y))
            + PathElement::new(vec![(-6, 0), (6, 0)], BLACK.stroke_width(1))
    };
    for (i, bar) in bars() {
        let (low, high) = ((bar.mean - bar.stddev).max(0.0), bar.mean + bar.stddev);
        let x = SegmentValue::CenterOf(i);
        chart.draw_series([PathElement::new(
            vec![(x.clone(), low), (x, high)],
            BLACK.stroke_width(1),
        )])?;
        chart.draw_series([whisker(i, low), whisker(i, high)])?;
    }
    let value_style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(bars().map(|(i, bar)| {
        Text::new(
            format!("{:.1}", bar.mean),
            (
                SegmentValue::CenterOf(i),
                bar.mean + bar.stddev + top * 0.01,
            ),
            value_style.clone(),
        )
    }))?;
    Ok(())
}
