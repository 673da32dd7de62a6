//! SVG plots of a comparison: one panel per workload, client count on a log₂ axis, raftkv and
//! etcd as two lines. SVG only (plotters without its font and bitmap features), so drawing
//! needs no system libraries; the browser renders the text.

use std::path::Path;

use plotters::prelude::*;

use crate::compare::{Median, Row};
use crate::BenchError;

/// Which figure a plot shows.
#[derive(Clone, Copy, Debug)]
pub enum Metric {
    Throughput,
    P99,
}

impl Metric {
    fn of(self, m: &Median) -> f64 {
        match self {
            Metric::Throughput => m.ops_per_sec,
            Metric::P99 => m.p99_ms,
        }
    }

    fn axis(self) -> &'static str {
        match self {
            Metric::Throughput => "ops/s",
            Metric::P99 => "p99 ms",
        }
    }
}

const RAFTKV: RGBColor = RGBColor(0xd9, 0x48, 0x1c);
const ETCD: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);

/// Draws `metric` for every workload that ran on both systems into an SVG at `path`.
pub fn draw(rows: &[Row], metric: Metric, path: &Path) -> Result<(), BenchError> {
    let err = |e: String| BenchError::Report(format!("plotting {}: {e}", path.display()));
    let mut workloads: Vec<&str> = Vec::new();
    for r in rows.iter().filter(|r| r.etcd.is_some()) {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let cols = workloads.len().clamp(1, 3);
    let grid = workloads.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (420 * cols as u32, 320 * grid as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((grid, cols));
    for (panel, workload) in panels.iter().zip(&workloads) {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.workload == *workload).collect();
        let x = |clients: usize| (clients.max(1) as f64).log2();
        let x_max = mine.iter().map(|r| x(r.clients)).fold(1.0, f64::max);
        let y_max = mine
            .iter()
            .flat_map(|r| [Some(metric.of(&r.raftkv)), r.etcd.as_ref().map(|e| metric.of(e))])
            .flatten()
            .fold(0.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{workload}: {}", metric.axis()), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max.max(1.0))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|v| format!("{}", 2f64.powf(*v).round()))
            .y_desc(metric.axis())
            .y_label_formatter(&|v| match metric {
                Metric::Throughput => format!("{v:.0}"),
                Metric::P99 => format!("{v:.1}"),
            })
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let series = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
            mine.iter().filter_map(|r| f(r).map(|v| (x(r.clients), v))).collect()
        };
        for (name, color, points) in [
            ("raftkv", RAFTKV, series(&|r| Some(metric.of(&r.raftkv)))),
            ("etcd", ETCD, series(&|r| r.etcd.as_ref().map(|e| metric.of(e)))),
        ] {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}
