//! PNG plots of the figures (plotters, bitmap backend).

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use crate::stats::Summary;

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn ensure_font() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH).map_err(|e| {
                format!("{FONT_PATH}: {e} (install fonts-dejavu-core: `cargo xtask setup`)")
            })?;
            register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| format!("{FONT_PATH} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One line of a line plot: its points (x, summary of y).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, Summary)>,
}

/// A line plot, x on a log scale, each point its median with a bar from q1 to q3.
pub fn lines_log_x(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<()> {
    ensure_font()?;
    let all = || series.iter().flat_map(|s| &s.points);
    let x_max = all().map(|(x, _)| *x).fold(1.0, f64::max) * 1.5;
    let y_max = all().map(|(_, s)| s.q3).fold(1.0, f64::max) * 1.15;
    let y_min = all().map(|(_, s)| s.q1).fold(0.0, f64::min);
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.7f64..x_max).log_scale(), y_min..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(x, y)| (*x, y.median)),
                colour.stroke_width(2),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(
            s.points
                .iter()
                .map(|(x, y)| ErrorBar::new_vertical(*x, y.q1, y.median, y.q3, colour.filled(), 6)),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))
}

/// Horizontal bars, one per variant: its median, with a line from q1 to q3.
pub fn bars(path: &Path, title: &str, x_desc: &str, bars: &[(String, Summary)]) -> Result<()> {
    ensure_font()?;
    let x_max = bars.iter().map(|(_, s)| s.q3).fold(1.0, f64::max) * 1.1;
    let n = bars.len() as i32;
    let root = BitMapBackend::new(path, (1000, 120 + 40 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(260)
        .build_cartesian_2d(0f64..x_max, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => {
                bars.get((n - 1 - *i) as usize).map(|(name, _)| name.clone()).unwrap_or_default()
            }
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, s)) in bars.iter().enumerate() {
        let row = n - 1 - i as i32;
        let colour = COLOURS[i % COLOURS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, SegmentValue::Exact(row)), (s.median, SegmentValue::Exact(row + 1))],
            colour.mix(0.7).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            [(s.q1, SegmentValue::CenterOf(row)), (s.q3, SegmentValue::CenterOf(row))],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))
}
