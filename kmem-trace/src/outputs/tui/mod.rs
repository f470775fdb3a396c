//! The live terminal view of `watch` (ratatui + crossterm) when stdout is a
//! terminal: gauges, owner table (leak rate per owner, path owners grouped by
//! parent), dying-count sparkline and event tail ([`render`]) from a pure
//! [`model::Model`]; keys `q` quit, `s` sort, `/` filter (every pane), `r`
//! residents, ↑/↓ and Enter open a group. Columns are fitted to the width
//! ([`fit`]), down to 80×24. The terminal is restored on every exit path
//! ([`term`]). When piped, `watch` keeps the plain lines of `outputs::line`.

pub mod fit;
pub mod model;
pub mod owners;
pub mod render;
pub mod tail;
pub mod term;

use std::io::{Stdout, Write};

use ratatui::{backend::CrosstermBackend, Terminal};

pub use model::{Action, Model};

use super::{
    aggregate::owner_rows, line::LineOutput, page_size, Clock, HookLabels, Key, Keys, Output,
    OutputError, Snapshot, Status, Summary,
};
use crate::{attribution::Attribution, decode::TraceEvent, lifecycle::Applied};

/// The live view as a pipeline output.
pub struct TuiOutput {
    model: Model,
    terminal: Option<Terminal<CrosstermBackend<Stdout>>>,
    guard: Option<term::Guard>,
    clock: Clock,
    hooks: HookLabels,
    page: u64,
}

/// Starts the live view: the output, the key reader thread (keep it for the
/// run) and the channel of keys for `watch::run_interactive`.
pub fn start(
    clock: Clock,
    hooks: HookLabels,
) -> Result<(TuiOutput, term::KeyReader, Keys), OutputError> {
    let out = TuiOutput::enter(clock, hooks)?;
    let (reader, keys) = term::KeyReader::spawn()?;
    Ok((out, reader, keys))
}

impl TuiOutput {
    /// Enters raw mode and the alternate screen.
    pub fn enter(clock: Clock, hooks: HookLabels) -> Result<TuiOutput, OutputError> {
        let guard = term::Guard::enter()?;
        let terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        Ok(TuiOutput {
            model: Model::new(),
            terminal: Some(terminal),
            guard: Some(guard),
            clock,
            hooks,
            page: page_size(),
        })
    }

    fn draw(&mut self) -> Result<(), OutputError> {
        if let Some(t) = self.terminal.as_mut() {
            let m = &self.model;
            t.draw(|f| render::draw(f, m))?;
        }
        Ok(())
    }

    /// Back to the normal screen (idempotent).
    fn leave(&mut self) {
        self.terminal = None;
        self.guard = None;
    }
}

impl Output for TuiOutput {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let e = tail::TailEvent::new(&self.clock, &self.hooks, self.page, ev, applied, owner);
        self.model.push_event(e);
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<(), OutputError> {
        self.model.set_owners(owner_rows(s), s.now_ns);
        Ok(())
    }

    fn status(&mut self, status: &Status) -> Result<(), OutputError> {
        self.model.set_status(status);
        self.draw()
    }

    fn summary(&mut self, summary: &Summary) -> Result<(), OutputError> {
        self.leave();
        // The normal screen gets the same summary the line output prints.
        let mut plain = LineOutput::new(
            std::io::stdout().lock(),
            self.clock,
            HookLabels::new(),
            false,
        );
        plain.summary(summary)?;
        std::io::stdout().flush()?;
        Ok(())
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        self.model.push_note(msg);
        Ok(())
    }

    fn key(&mut self, key: Key) -> Result<bool, OutputError> {
        match self.model.key(key) {
            Action::Quit => Ok(false),
            Action::Redraw => self.draw().map(|_| true),
            Action::Nothing => Ok(true),
        }
    }
}

impl Drop for TuiOutput {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests;
