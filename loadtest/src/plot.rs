//! plot.png: the latency CDF of operator vs floor (top) and the members ready over time in each phase
//! (bottom). Text is drawn from a system TrueType font found at run time.

use std::path::Path;

use anyhow::{Context as _, bail};
use plotters::prelude::*;

/// Places where Debian/Ubuntu/Fedora/Arch keep DejaVu or Liberation Sans.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let from_env = std::env::var("KD_LOADTEST_FONT").ok();
    let candidates = from_env.iter().map(String::as_str).chain(FONTS.iter().copied());
    for path in candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // The font registry wants 'static bytes; one font per process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!(
        "no TrueType font for plot.png: install fonts-dejavu-core, or point KD_LOADTEST_FONT at a .ttf (looked in {})",
        FONTS.join(", ")
    )
}

/// (fraction, seconds) points of the empirical CDF.
pub fn cdf(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut s: Vec<f64> = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    s.iter().enumerate().map(|(i, v)| (*v, (i + 1) as f64 / n)).collect()
}

/// Cumulative members ready over time: (seconds since the phase began, members).
pub fn timeline(done: &[(f64, u32)]) -> Vec<(f64, f64)> {
    let mut d = done.to_vec();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut out = vec![(0.0, 0.0)];
    for (t, m) in d {
        total += f64::from(m);
        out.push((t, total));
    }
    out
}

pub struct Series<'a> {
    pub operator_latency: &'a [f64],
    pub floor_latency: &'a [f64],
    pub operator_ready: &'a [(f64, u32)],
    pub floor_ready: &'a [(f64, u32)],
}

/// A named line of points in a colour.
type Line<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// One panel: `lines` on axes from 0 to 5 % past the largest point.
struct Panel<'a> {
    caption: String,
    x_desc: &'a str,
    y_desc: &'a str,
    lines: Vec<Line<'a>>,
}

fn panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, p: Panel) -> anyhow::Result<()> {
    let points = || p.lines.iter().flat_map(|l| l.1.iter());
    let max_x = points().map(|q| q.0).fold(1.0, f64::max) * 1.05;
    let max_y = points().map(|q| q.1).fold(1.0, f64::max) * 1.05;
    let mut c = ChartBuilder::on(area)
        .caption(p.caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .context("plot")?;
    c.configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .draw()
        .context("plot")?;
    for (name, data, color) in p.lines {
        c.draw_series(LineSeries::new(data, color.stroke_width(2)))
            .context("plot")?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .context("plot")?;
    Ok(())
}

pub fn draw(path: &Path, title: &str, s: &Series) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    let (top, bottom) = root.split_vertically(450);
    panel(
        &top,
        Panel {
            caption: format!("{title}: create → ready, CDF"),
            x_desc: "seconds",
            y_desc: "fraction of CRs",
            lines: vec![
                ("operator (create → configured)", cdf(s.operator_latency), RED),
                ("floor (StatefulSets+Services → pods Ready)", cdf(s.floor_latency), BLUE),
            ],
        },
    )?;
    panel(
        &bottom,
        Panel {
            caption: "members ready over time".to_string(),
            x_desc: "seconds since the phase began",
            y_desc: "members",
            lines: vec![
                ("operator", timeline(s.operator_ready), RED),
                ("floor", timeline(s.floor_ready), BLUE),
            ],
        },
    )?;
    root.present().context("writing plot.png")?;
    Ok(())
}

/// One panel alone in a PNG.
fn single(path: &Path, p: Panel) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    panel(&root, p)?;
    root.present().context("writing plot.png")?;
    Ok(())
}

/// Capacity: p50 and p99 against the arrival rate, floor and operator, with the SLO.
pub fn rates(path: &Path, floor: &[(f64, f64, f64)], operator: &[(f64, f64, f64)], slo: f64) -> anyhow::Result<()> {
    let pick = |s: &[(f64, f64, f64)], p99: bool| -> Vec<(f64, f64)> {
        s.iter()
            .map(|(r, p50, p99v)| (*r, if p99 { *p99v } else { *p50 }))
            .collect()
    };
    let max_rate = floor.iter().chain(operator).map(|p| p.0).fold(0.0, f64::max);
    single(
        path,
        Panel {
            caption: "latency vs arrival rate".to_string(),
            x_desc: "CRs per second per cluster",
            y_desc: "seconds from arrival",
            lines: vec![
                ("floor p50", pick(floor, false), RGBColor(120, 120, 255)),
                ("floor p99", pick(floor, true), BLUE),
                ("operator p50", pick(operator, false), RGBColor(255, 120, 120)),
                ("operator p99", pick(operator, true), RED),
                ("SLO", vec![(0.0, slo), (max_rate, slo)], BLACK),
            ],
        },
    )
}

/// Scale-out: capacity against replicas, with the ideal (linear from the first point).
pub fn scaleout(path: &Path, points: &[(f64, f64)]) -> anyhow::Result<()> {
    let ideal = points
        .first()
        .map(|(r1, c1)| points.iter().map(|(r, _)| (*r, c1 * r / r1)).collect())
        .unwrap_or_default();
    single(
        path,
        Panel {
            caption: "capacity vs replicas".to_string(),
            x_desc: "replicas",
            y_desc: "CRs per second per cluster",
            lines: vec![("measured", points.to_vec(), RED), ("linear", ideal, BLACK)],
        },
    )
}

/// Latency CDFs of named passes (burst).
pub fn cdfs(path: &Path, passes: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    const COLOURS: [RGBColor; 4] = [BLUE, RED, RGBColor(0, 150, 0), RGBColor(200, 120, 0)];
    single(
        path,
        Panel {
            caption: "burst: arrival → done, CDF".to_string(),
            x_desc: "seconds",
            y_desc: "fraction of CRs",
            lines: passes
                .iter()
                .enumerate()
                .map(|(i, (name, l))| (name.as_str(), cdf(l), COLOURS[i % COLOURS.len()]))
                .collect(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_and_timeline() {
        assert_eq!(cdf(&[2.0, 1.0]), vec![(1.0, 0.5), (2.0, 1.0)]);
        assert_eq!(
            timeline(&[(2.0, 5), (1.0, 5)]),
            vec![(0.0, 0.0), (1.0, 5.0), (2.0, 10.0)]
        );
    }
}
