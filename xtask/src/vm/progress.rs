//! Progress of the matrix while it runs: per row, the family and step it is on
//! and the time since it started. On a terminal one status line per row is
//! redrawn in place; otherwise (CI logs) each step is printed once.

use std::{
    io::{IsTerminal, Write},
    sync::Mutex,
    time::Instant,
};

pub struct Progress {
    start: Instant,
    tty: bool,
    rows: Mutex<Rows>,
}

#[derive(Default)]
struct Rows {
    labels: Vec<String>,
    status: Vec<String>,
    drawn: usize,
}

impl Progress {
    pub fn new(labels: &[String]) -> Progress {
        Progress {
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            rows: Mutex::new(Rows {
                labels: labels.to_vec(),
                status: vec!["waiting".into(); labels.len()],
                drawn: 0,
            }),
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Row `label` is now at `family: step`.
    pub fn update(&self, label: &str, family: Option<&str>, step: &str) {
        let t = self.elapsed_s();
        let what = match family {
            Some(f) => format!("{f}: {step}"),
            None => step.to_string(),
        };
        let mut rows = self.rows.lock().expect("progress lock");
        let Some(i) = rows.labels.iter().position(|l| l == label) else {
            return;
        };
        rows.status[i] = format!("[{t:6.1}s] {what}");
        let mut err = std::io::stderr().lock();
        if !self.tty {
            let _ = writeln!(err, "[{t:6.1}s] {label:<34} {what}");
            return;
        }
        // Move up over the block drawn last time and redraw it.
        if rows.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", rows.drawn);
        }
        for (l, s) in rows.labels.iter().zip(&rows.status) {
            let _ = writeln!(err, "\x1b[2K{l:<34} {s}");
        }
        rows.drawn = rows.labels.len();
        let _ = err.flush();
    }

    /// Forgets the drawn block, so normal output continues below it.
    pub fn done(&self) {
        self.rows.lock().expect("progress lock").drawn = 0;
    }
}
