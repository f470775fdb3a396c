//! What the live view shows, and what keys do to it: the latest status, the
//! owner table, the dying-count history for the sparkline, the event tail, the
//! sort order and the filter. Pure: no terminal, so it is tested directly.

use std::collections::VecDeque;

use crate::outputs::{
    aggregate::{sort_rows, OwnerRow, SortKey},
    Status,
};

/// A key, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C (raw mode turns it into a key, not a signal).
    Interrupt,
    /// The terminal changed size.
    Resize,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    Nothing,
}

/// Ticks kept for the sparkline (at 4 ticks a second: a minute; the view
/// shows as many as fit).
pub const HISTORY: usize = 600;
/// Event lines kept for the tail.
pub const TAIL: usize = 500;

/// One event line of the tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailLine {
    pub text: String,
    /// Notes (drops, warnings) are shown highlighted.
    pub note: bool,
}

/// The state of the live view.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub status: Option<Status>,
    /// Owner table, in the current sort order.
    pub owners: Vec<OwnerRow>,
    /// Dying memcgs at each tick, oldest first.
    pub dying_history: VecDeque<u64>,
    pub tail: VecDeque<TailLine>,
    pub sort: SortKey,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing: bool,
    /// Events seen (for the tail's title).
    pub events: u64,
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// A status tick: counts for the gauges, a point for the sparkline.
    pub fn set_status(&mut self, s: &Status) {
        if self.dying_history.len() == HISTORY {
            self.dying_history.pop_front();
        }
        self.dying_history.push_back(s.counts.dying);
        self.status = Some(s.clone());
    }

    /// New owner rows (from a snapshot), sorted by the current key.
    pub fn set_owners(&mut self, mut rows: Vec<OwnerRow>) {
        sort_rows(&mut rows, self.sort);
        self.owners = rows;
    }

    pub fn push_event(&mut self, text: String) {
        self.events += 1;
        self.push(TailLine { text, note: false });
    }

    pub fn push_note(&mut self, text: &str) {
        self.push(TailLine {
            text: format!("! {text}"),
            note: true,
        });
    }

    fn push(&mut self, l: TailLine) {
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(l);
    }

    /// Applies a key. `q` quits, `s` cycles the sort, `/` edits the filter
    /// (Enter keeps it, Esc clears it); Ctrl-C quits from anywhere.
    pub fn key(&mut self, k: Key) -> Action {
        if k == Key::Interrupt {
            return Action::Quit;
        }
        if self.editing {
            match k {
                Key::Char(c) if !c.is_control() => self.filter.push(c),
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.filter.clear();
                    self.editing = false;
                }
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        match k {
            Key::Char('q') | Key::Char('Q') => Action::Quit,
            Key::Char('s') | Key::Char('S') => {
                self.sort = self.sort.next();
                sort_rows(&mut self.owners, self.sort);
                Action::Redraw
            }
            Key::Char('/') => {
                self.editing = true;
                Action::Redraw
            }
            Key::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                Action::Redraw
            }
            Key::Resize => Action::Redraw,
            _ => Action::Nothing,
        }
    }

    fn matches(&self, text: &str) -> bool {
        self.filter.is_empty() || text.to_lowercase().contains(&self.filter.to_lowercase())
    }

    /// Owner rows that match the filter.
    pub fn visible_owners(&self) -> impl Iterator<Item = &OwnerRow> {
        self.owners
            .iter()
            .filter(|r| self.matches(&format!("{} {}", r.label(), r.kind)))
    }

    /// The last `n` tail lines that match the filter, oldest first.
    pub fn visible_tail(&self, n: usize) -> Vec<&TailLine> {
        let mut v: Vec<&TailLine> = self
            .tail
            .iter()
            .rev()
            .filter(|l| l.note || self.matches(&l.text))
            .take(n)
            .collect();
        v.reverse();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, zombies: u64, pinned: u64) -> OwnerRow {
        OwnerRow {
            namespace: "shop".into(),
            pod: format!("{name}-pod"),
            container: name.into(),
            kind: "pod",
            zombies,
            dying: zombies,
            pinned_bytes: pinned,
            ..OwnerRow::default()
        }
    }

    #[test]
    fn keys_quit_sort_and_filter() {
        let mut m = Model::new();
        m.set_owners(vec![row("web", 1, 10 << 20), row("db", 4, 1 << 20)]);
        assert_eq!(m.owners[0].container, "db", "zombies first");
        assert_eq!(m.key(Key::Char('s')), Action::Redraw);
        assert_eq!(m.sort, SortKey::Pinned);
        assert_eq!(m.owners[0].container, "web", "then pinned bytes");
        assert_eq!(m.key(Key::Char('/')), Action::Redraw);
        for c in "DB".chars() {
            m.key(Key::Char(c));
        }
        // `q` while typing is part of the filter, not a quit.
        assert_eq!(m.key(Key::Char('q')), Action::Redraw);
        assert_eq!(m.filter, "DBq");
        m.key(Key::Backspace);
        m.key(Key::Enter);
        assert!(!m.editing);
        let names: Vec<&str> = m.visible_owners().map(|r| r.container.as_str()).collect();
        assert_eq!(names, ["db"], "filter is case-insensitive");
        assert_eq!(m.key(Key::Esc), Action::Redraw);
        assert_eq!(m.visible_owners().count(), 2);
        assert_eq!(m.key(Key::Char('x')), Action::Nothing);
        assert_eq!(m.key(Key::Char('q')), Action::Quit);
        m.key(Key::Char('/'));
        assert_eq!(
            m.key(Key::Interrupt),
            Action::Quit,
            "Ctrl-C quits while typing"
        );
    }

    #[test]
    fn history_and_tail_are_bounded() {
        let mut m = Model::new();
        let mut s = Status {
            counts: Default::default(),
            drops: 0,
            hook_family: "tracepoint".into(),
            elapsed_s: 0.0,
            forecast: None,
        };
        for i in 0..(HISTORY as u64 + 10) {
            s.counts.dying = i;
            m.set_status(&s);
        }
        assert_eq!(m.dying_history.len(), HISTORY);
        assert_eq!(*m.dying_history.back().unwrap(), HISTORY as u64 + 9);
        for i in 0..(TAIL + 5) {
            m.push_event(format!("event {i}"));
        }
        m.push_note("3 events dropped");
        assert_eq!(m.tail.len(), TAIL);
        m.filter = "event 50".into();
        let t = m.visible_tail(3);
        // Matching lines and every note, oldest first.
        assert_eq!(t.last().unwrap().text, "! 3 events dropped");
        assert!(t.iter().all(|l| l.note || l.text.contains("event 50")));
    }
}
