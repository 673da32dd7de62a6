//! The run's report in its directory: `index.html` ties together the verdict of each checker,
//! the fault timeline, throughput and latency over time with the faults shaded, and the raw
//! files; for a linearizability failure it lists the smallest failing key's shortest
//! non-linearizable run of operations, the faults around it, and links porcupine's view of it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use kv_check::explain::{Failure, Marker};
use kv_check::history::{Op, Record};

use crate::nemesis::Window;
use crate::run::{History, Verdict};
use crate::HarnessError;

/// Where a linearizability failure sits: its key, operations and the faults around them.
#[derive(Debug, serde::Serialize)]
pub struct Pointer {
    pub key: String,
    /// Operations on the key checked in all, and in the failing run.
    pub key_ops: usize,
    /// Indices into history.json.
    pub ops: Vec<usize>,
    /// Whether the run starts at the key's first operation (else at a moment the key was
    /// quiet, checked from whatever state it held then).
    pub from_start: bool,
    pub from_ms: f64,
    pub to_ms: f64,
    /// The faults in effect during the run of operations, or else the last one before it.
    pub faults: Vec<Window>,
    /// porcupine's view of the run, relative to the report's directory.
    pub page: String,
}

impl Pointer {
    /// Finds the run's place in time and writes porcupine's page for it into `dir`.
    pub fn new(
        failure: &Failure,
        history: &[Record],
        timeline: &[Window],
        dir: &Path,
    ) -> Result<Pointer, HarnessError> {
        let ms = |ns: i64| ns as f64 / 1e6;
        let from = failure.ops.iter().map(|&i| history[i].call).min().unwrap_or(0);
        let to = failure.ops.iter().map(|&i| history[i].ret.unwrap_or(history[i].call)).max().unwrap_or(from);
        let (from_ms, to_ms) = (ms(from), ms(to));
        let during: Vec<Window> = timeline
            .iter()
            .filter(|w| (w.start_ms as f64) <= to_ms && w.end_ms.is_none_or(|e| e as f64 >= from_ms))
            .cloned()
            .collect();
        let faults = if during.is_empty() {
            timeline.iter().rev().find(|w| (w.start_ms as f64) <= from_ms).cloned().into_iter().collect()
        } else {
            during
        };
        let markers: Vec<Marker> = timeline
            .iter()
            .map(|w| Marker {
                start_ns: w.start_ms as i64 * 1_000_000,
                end_ns: w.end_ms.map(|e| e as i64 * 1_000_000),
                text: format!("{}: {}", w.fault, w.detail),
            })
            .collect();
        let page = format!("linearization-{}.html", failure.key);
        failure
            .visualize(&markers, &dir.join(&page))
            .map_err(|e| HarnessError::Report(format!("writing {}: {e}", dir.join(&page).display())))?;
        Ok(Pointer {
            key: failure.key.clone(),
            key_ops: failure.key_ops,
            ops: failure.ops.clone(),
            from_start: failure.from_start,
            from_ms,
            to_ms,
            faults,
            page,
        })
    }

    /// One line for the verdict.
    pub fn summary(&self) -> String {
        let when = if self.faults.is_empty() {
            "with no fault before it".to_string()
        } else {
            self.faults.iter().map(window_words).collect::<Vec<_>>().join("; ")
        };
        format!(
            "key {}: {} of its {} operations admit no linearization, {:.3}–{:.3} s; faults: {when}; see {}",
            self.key,
            self.ops.len(),
            self.key_ops,
            self.from_ms / 1000.0,
            self.to_ms / 1000.0,
            self.page
        )
    }
}

fn window_words(w: &Window) -> String {
    let end = w.end_ms.map_or("not healed".to_string(), |e| format!("{:.1} s", e as f64 / 1000.0));
    format!("{} ({}) {:.1} s – {end}", w.fault, w.detail, w.start_ms as f64 / 1000.0)
}

/// Writes the plots and `index.html` into the verdict's directory; returns the page's path.
pub fn write(verdict: &Verdict, history: &History, timeline: &[Window]) -> Result<PathBuf, HarnessError> {
    let dir = &verdict.dir;
    let secs = crate::plot::seconds(&history.times());
    crate::plot::throughput(&secs, timeline, &dir.join("throughput.svg"))?;
    crate::plot::latency(&secs, timeline, &dir.join("latency.svg"))?;

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>jepsen {workload} seed {seed}: {validity}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:1em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}.valid{{color:#176b1d}}\
         .invalid{{color:#b3120b}}.unknown{{color:#8a6100}}</style></head><body>\
         <h1>{workload}: <span class=\"{validity}\">{validity}</span></h1>\
         <p>Seed {seed}; {time:.1} s; {ops} operations ({ok} ok, {fail} failed, {unknown} unknown); {faults} faults; \
         members converged {converged}.</p>",
        workload = esc(&format!("{:?}", verdict.workload).to_lowercase()),
        seed = verdict.seed,
        validity = verdict.validity,
        time = verdict.time_s,
        ops = verdict.ops,
        ok = verdict.outcomes.ok,
        fail = verdict.outcomes.fail,
        unknown = verdict.outcomes.unknown,
        faults = verdict.faults,
        converged =
            verdict.converged_after_ms.map_or("never".to_string(), |ms| format!("{ms} ms after the audit began")),
    );
    h.push_str("<h2>Checkers</h2><table><tr><th>checker</th><th>verdict</th><th>what it found</th></tr>");
    for c in &verdict.checkers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{v}\">{v}</td><td>{}</td></tr>",
            esc(&c.checker),
            esc(&c.detail),
            v = c.validity
        );
    }
    h.push_str("</table>");
    if let (Some(p), History::Register(history)) = (&verdict.linearizability, history) {
        let _ = write!(
            h,
            "<h2>Smallest failing history: key {key}</h2><p>{n} of the key's {all} operations, {from:.3}–{to:.3} s, \
             admit no linearization{start}. <a href=\"{page}\">porcupine's view</a> (the longest linearizations \
             it found, per client; faults on their own line).</p><p>Faults: {faults}</p>\
             <table><tr><th>history</th><th>client</th><th>level</th><th>member</th><th>call s</th><th>return s</th>\
             <th>operation</th></tr>",
            key = esc(&p.key),
            n = p.ops.len(),
            all = p.key_ops,
            from = p.from_ms / 1000.0,
            to = p.to_ms / 1000.0,
            start = if p.from_start { "" } else { " from whatever state the key held before them" },
            page = esc(&p.page),
            faults = esc(&p.faults.iter().map(window_words).collect::<Vec<_>>().join("; ")),
        );
        for &i in &p.ops {
            let r = &history[i];
            let _ = write!(
                h,
                "<tr><td>{i}</td><td>{}</td><td>{:?}</td><td>n{}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                r.client,
                r.level,
                r.member + 1,
                r.call as f64 / 1e9,
                r.ret.map_or("none".to_string(), |t| format!("{:.3}", t as f64 / 1e9)),
                esc(&describe(&r.op)),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Over time</h2><p>Fault windows shaded.</p><img src=\"throughput.svg\"><img src=\"latency.svg\">");
    h.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>what it hit</th><th>from s</th><th>healed s</th></tr>");
    for w in timeline {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
            esc(&w.fault),
            esc(&w.detail),
            w.start_ms as f64 / 1000.0,
            w.end_ms.map_or("—".to_string(), |e| format!("{:.1}", e as f64 / 1000.0))
        );
    }
    h.push_str(
        "</table><h2>Files</h2><ul><li><a href=\"verdict.json\">verdict.json</a></li>\
         <li><a href=\"history.json\">history.json</a>: every operation, times in ns since the workload began</li>\
         <li><a href=\"timeline.json\">timeline.json</a>: the faults, in ms</li>",
    );
    for log in member_logs(dir) {
        let _ = write!(h, "<li><a href=\"{0}\">{0}</a></li>", esc(&log));
    }
    h.push_str("</ul></body></html>\n");
    let page = dir.join("index.html");
    std::fs::write(&page, h).map_err(|e| HarnessError::Report(format!("writing {}: {e}", page.display())))?;
    Ok(page)
}

fn member_logs(dir: &Path) -> Vec<String> {
    let mut logs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    logs
}

fn describe(op: &Op) -> String {
    let v = |v: Option<u64>| v.map_or("absent".to_string(), |v| v.to_string());
    match op {
        Op::Put { value, revision } => match revision {
            Some(r) => format!("put {value}: ok at revision {r}"),
            None => format!("put {value}: unknown"),
        },
        Op::Cas { expect, value, outcome } => match outcome {
            Some((true, r)) => format!("cas {} -> {value}: ok at revision {r}", v(*expect)),
            Some((false, r)) => format!("cas {} -> {value}: did not hold at revision {r}", v(*expect)),
            None => format!("cas {} -> {value}: unknown", v(*expect)),
        },
        Op::Get { seen, revision, .. } => {
            format!("get: {} (mod revision {}) at revision {revision}", v(seen.map(|s| s.0)), seen.map_or(0, |s| s.1))
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
