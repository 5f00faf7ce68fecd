//! Progress of a job on stderr: a bar (rows, rows/s, ETA) on a terminal, plain lines at
//! most every [`LINE_EVERY`] otherwise (logs, CI, Kubernetes), nothing when quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written at most.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

pub enum Progress {
    Bar(ProgressBar),
    Lines { started: Instant, last: Instant, total: Option<u64> },
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, else plain lines.
    pub fn on_stderr() -> Progress {
        if !std::io::stderr().is_terminal() {
            let now = Instant::now();
            return Progress::Lines { started: now, last: now, total: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {human_pos} rows  {per_sec}  {elapsed}  {msg}")
                .expect("a valid template"),
        );
        Progress::Bar(bar)
    }

    /// The input's rows, when its format says up front (Parquet): a bar with an ETA.
    pub fn set_total(&mut self, rows: Option<u64>) {
        match (self, rows) {
            (Progress::Bar(bar), Some(rows)) => {
                bar.set_length(rows);
                bar.set_style(
                    ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} rows  {per_sec}  eta {eta}  {msg}")
                        .expect("a valid template"),
                );
            }
            (Progress::Lines { total, .. }, rows) => *total = rows,
            _ => {}
        }
    }

    /// `rows` rows done in all, `bad` of them bad.
    pub fn update(&mut self, rows: u64, bad: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(rows);
                if bad > 0 {
                    bar.set_message(format!("{bad} bad rows"));
                }
            }
            Progress::Lines { started, last, total } => {
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
                    let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                    eprintln!("rfleet score: {rows}{of} rows, {bad} bad, {rate:.0} rows/s");
                }
            }
            Progress::Quiet => {}
        }
    }

    pub fn finish(&mut self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}
