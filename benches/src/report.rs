//! A run's summary: throughput and latency percentiles, as JSON (for tools) and a Markdown
//! table row (for docs/benchmarks.md).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::Spec;
use crate::workload::Workload;

/// What one run measured. Latencies in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub workload_name: String,
    pub clients: usize,
    pub connections: usize,
    /// Open loop: the requested rate. None: closed loop.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Report {
    pub fn new(spec: &Spec, h: &Histogram<u64>, errors: u64, elapsed: Duration) -> Report {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let seconds = elapsed.as_secs_f64();
        Report {
            workload: spec.workload,
            workload_name: spec.workload.to_string(),
            clients: spec.clients,
            connections: spec.connections,
            rate: spec.rate,
            seconds,
            ops: h.len(),
            errors,
            ops_per_sec: if seconds > 0.0 { h.len() as f64 / seconds } else { 0.0 },
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }

    /// The header of [`Report::markdown_row`]'s table.
    pub fn markdown_header() -> String {
        "| workload | clients | conns | ops/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
            .into()
    }

    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            self.workload_name,
            self.clients,
            self.connections,
            self.ops_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.errors
        )
    }
}
