//! A run over time as SVG: answered operations per second and their latency, with every fault
//! window shaded and named. Drawn like the bench's plots (plotters' SVG backend only, so
//! nothing needs system libraries; the browser renders the text).

use std::path::Path;

use plotters::prelude::*;

use crate::nemesis::Window;
use crate::HarnessError;

const OK: RGBColor = RGBColor(0xd9, 0x48, 0x1c);
const UNKNOWN: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);
const FAULT: RGBColor = RGBColor(0xf6, 0xd3, 0xc4);

/// One second of the run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Second {
    /// Operations answered in this second.
    pub answered: u64,
    /// Operations called in this second that got no answer (for writes: outcome unknown).
    pub unanswered: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Operations given as (call, return) in ns since the workload began, per second.
pub fn seconds(times: &[(i64, Option<i64>)]) -> Vec<Second> {
    let s = |ns: i64| (ns.max(0) / 1_000_000_000) as usize;
    let last = times.iter().map(|(call, ret)| s(ret.unwrap_or(*call))).max().unwrap_or(0);
    let mut out = vec![Second::default(); last + 1];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); last + 1];
    for &(call, ret) in times {
        match ret {
            Some(ret) => {
                out[s(ret)].answered += 1;
                latencies[s(ret)].push((ret - call) as f64 / 1e6);
            }
            None => out[s(call)].unanswered += 1,
        }
    }
    for (second, mut l) in out.iter_mut().zip(latencies) {
        if l.is_empty() {
            continue;
        }
        l.sort_by(f64::total_cmp);
        let at = |q: f64| l[((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1];
        second.p50_ms = Some(at(0.50));
        second.p99_ms = Some(at(0.99));
    }
    out
}

/// Answered and unanswered operations per second.
pub fn throughput(secs: &[Second], faults: &[Window], path: &Path) -> Result<(), HarnessError> {
    let series = [
        ("answered", OK, secs.iter().enumerate().map(|(i, s)| (i as f64, s.answered as f64)).collect()),
        ("unanswered", UNKNOWN, secs.iter().enumerate().map(|(i, s)| (i as f64, s.unanswered as f64)).collect()),
    ];
    draw("operations per second", "ops/s", secs.len(), &series, faults, path)
}

/// Latency of answered operations per second: median and 99th percentile.
pub fn latency(secs: &[Second], faults: &[Window], path: &Path) -> Result<(), HarnessError> {
    let pick =
        |f: fn(&Second) -> Option<f64>| secs.iter().enumerate().filter_map(|(i, s)| Some((i as f64, f(s)?))).collect();
    let series = [("p50", UNKNOWN, pick(|s| s.p50_ms)), ("p99", OK, pick(|s| s.p99_ms))];
    draw("latency of answered operations", "ms", secs.len(), &series, faults, path)
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

fn draw(
    caption: &str,
    y_desc: &str,
    seconds: usize,
    series: &[Series],
    faults: &[Window],
    path: &Path,
) -> Result<(), HarnessError> {
    let err = |e: String| HarnessError::Report(format!("plotting {}: {e}", path.display()));
    let x_max = (seconds.max(1)) as f64;
    let y_max = series.iter().flat_map(|s| s.2.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (960, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the workload began")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    // Fault windows first, under the lines; an unhealed one reaches the end.
    chart
        .draw_series(faults.iter().map(|w| {
            let end = w.end_ms.map_or(x_max, |e| e as f64 / 1000.0);
            Rectangle::new([(w.start_ms as f64 / 1000.0, 0.0), (end, y_max)], FAULT.mix(0.6).filled())
        }))
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(
            faults
                .iter()
                .map(|w| Text::new(w.fault.clone(), (w.start_ms as f64 / 1000.0, y_max * 0.97), ("sans-serif", 11))),
        )
        .map_err(|e| err(e.to_string()))?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
