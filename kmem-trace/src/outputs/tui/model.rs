//! What the live view shows, and what keys do to it: the latest status, the
//! owner table (with leak rates and groups), the dying-count history for the
//! sparkline, the event tail, the sort order, the one filter every pane
//! applies, the selected owner line and the expanded groups. Pure: no
//! terminal, so it is tested directly.

use std::collections::{HashSet, VecDeque};

use super::{
    owners::{self, Leak, LineKind, OwnerLine, SortKey},
    tail::{Tail, TailEvent, TailLine},
};
use crate::outputs::{aggregate::OwnerRow, Key, Status};

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

/// The state of the live view.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub status: Option<Status>,
    /// Owner rows of the last snapshot.
    pub owners: Vec<OwnerRow>,
    pub leak: Leak,
    /// Dying memcgs at each tick, oldest first.
    pub dying_history: VecDeque<u64>,
    pub tail: Tail,
    pub sort: SortKey,
    /// Applies to the owner table and the tail alike (owner name and path).
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing: bool,
    /// Resident (fork/exec/attach) lines in the tail (`r`).
    pub residents: bool,
    /// Parents of expanded groups.
    pub expanded: HashSet<String>,
    /// Index of the selected owner line.
    pub selected: usize,
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

    /// New owner rows (from a snapshot at monotonic `now_ns`).
    pub fn set_owners(&mut self, rows: Vec<OwnerRow>, now_ns: u64) {
        self.leak.observe(&rows, now_ns);
        self.owners = rows;
    }

    pub fn push_event(&mut self, e: TailEvent) {
        self.tail.push_event(e);
    }

    pub fn push_note(&mut self, text: &str) {
        self.tail.push_note(text);
    }

    fn needle(&self) -> String {
        self.filter.to_lowercase()
    }

    /// The owner table as shown: filtered, grouped, sorted.
    pub fn owner_lines(&self) -> Vec<OwnerLine> {
        owners::lines(
            &self.owners,
            &self.needle(),
            &self.expanded,
            self.sort,
            &self.leak,
        )
    }

    /// The last `n` tail lines that match the filter, oldest first (notes
    /// always; residents only when asked for).
    pub fn visible_tail(&self, n: usize) -> Vec<&TailLine> {
        let needle = self.needle();
        self.tail.last(n, self.residents, |e| {
            needle.is_empty() || e.matches(&needle)
        })
    }

    /// Opens or closes the selected group.
    fn toggle_selected(&mut self) -> Action {
        let lines = self.owner_lines();
        let Some(l) = lines.get(self.selected.min(lines.len().saturating_sub(1))) else {
            return Action::Nothing;
        };
        if !matches!(l.kind, LineKind::Group { .. }) {
            return Action::Nothing;
        }
        let p = l.row.path.clone();
        if !self.expanded.remove(&p) {
            self.expanded.insert(p);
        }
        Action::Redraw
    }

    /// Applies a key. `q` quits, `s` cycles the sort, `/` edits the filter
    /// (Enter keeps it, Esc clears it), `r` shows or hides residents,
    /// ↑/↓ (k/j) select an owner line, Enter or space opens or closes a
    /// group; Ctrl-C quits from anywhere.
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
            self.selected = 0;
            return Action::Redraw;
        }
        match k {
            Key::Char('q') | Key::Char('Q') => Action::Quit,
            Key::Char('s') | Key::Char('S') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            Key::Char('/') => {
                self.editing = true;
                Action::Redraw
            }
            Key::Char('r') | Key::Char('R') => {
                self.residents = !self.residents;
                Action::Redraw
            }
            Key::Up | Key::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            Key::Down | Key::Char('j') => {
                let last = self.owner_lines().len().saturating_sub(1);
                self.selected = (self.selected + 1).min(last);
                Action::Redraw
            }
            Key::Enter | Key::Char(' ') => self.toggle_selected(),
            Key::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                Action::Redraw
            }
            Key::Resize => Action::Redraw,
            _ => Action::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::tui::tail::{sample as ev, OwnerName, TAIL};
    use kmem_trace_common::EventKind;

    fn row(name: &str, zombies: u64, pinned: u64) -> OwnerRow {
        OwnerRow {
            namespace: "shop".into(),
            pod: format!("{name}-pod"),
            container: name.into(),
            kind: "pod",
            zombies,
            dying: zombies,
            pinned_bytes: pinned,
            path: format!("/kubepods/pod-{name}/c"),
            ..OwnerRow::default()
        }
    }

    #[test]
    fn keys_quit_sort_and_filter() {
        let mut m = Model::new();
        m.set_owners(vec![row("web", 1, 10 << 20), row("db", 4, 1 << 20)], 0);
        assert_eq!(m.owner_lines()[0].row.container, "db", "zombies first");
        assert_eq!(m.key(Key::Char('s')), Action::Redraw);
        assert_eq!(m.sort, SortKey::Leak);
        m.key(Key::Char('s'));
        assert_eq!(m.sort, SortKey::Pinned);
        assert_eq!(m.owner_lines()[0].row.container, "web", "then pinned bytes");
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
        let names: Vec<String> = m
            .owner_lines()
            .into_iter()
            .map(|l| l.row.container)
            .collect();
        assert_eq!(names, ["db"], "filter is case-insensitive");
        assert_eq!(m.key(Key::Esc), Action::Redraw);
        assert_eq!(m.owner_lines().len(), 2);
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
    fn one_filter_for_owners_and_events_by_owner_and_path() {
        let mut m = Model::new();
        m.set_owners(vec![row("web", 1, 0), row("db", 4, 0)], 0);
        let mut web = ev(EventKind::Offline, "/kubepods/pod-web/c", "sh");
        web.owner = Some(OwnerName {
            namespace: "shop".into(),
            pod: "web-pod".into(),
            container: "web".into(),
        });
        m.push_event(web);
        m.push_event(ev(EventKind::Offline, "/kubepods/pod-db/c", "sh"));
        for needle in ["pod-web", "WEB-POD"] {
            m.filter = needle.into();
            let owners: Vec<String> = m
                .owner_lines()
                .into_iter()
                .map(|l| l.row.container)
                .collect();
            assert_eq!(owners, ["web"], "{needle}");
            let tail = m.visible_tail(10);
            assert_eq!(tail.len(), 1, "{needle}");
        }
    }

    #[test]
    fn residents_are_kept_apart_and_shown_on_request() {
        let mut m = Model::new();
        m.push_event(ev(EventKind::Offline, "/a", "rmdir"));
        for i in 0..2000 {
            m.push_event(ev(EventKind::Resident, &format!("/busy/{i}"), "bash"));
        }
        m.push_note("3 events dropped");
        let t = m.visible_tail(5);
        assert_eq!(t.len(), 2, "lifecycle and notes only: {t:?}");
        assert!(matches!(t[0], TailLine::Event(e) if e.path == "/a"));
        assert_eq!(m.key(Key::Char('r')), Action::Redraw);
        let t = m.visible_tail(3);
        // Merged in arrival order: two residents, then the note.
        assert!(matches!(t[2], TailLine::Note(_)));
        assert!(matches!(t[1], TailLine::Event(e) if e.path == "/busy/1999"));
        assert_eq!(m.tail.residents_seen, 2000);
        assert!(m.tail.len() <= 2 * TAIL);
    }

    #[test]
    fn groups_open_and_close_with_the_selection() {
        let mut m = Model::new();
        let rows = (0..3)
            .map(|i| OwnerRow {
                namespace: "none".into(),
                container: format!("/jobs/j/t{i}"),
                path: format!("/jobs/j/t{i}"),
                kind: "path",
                ..OwnerRow::default()
            })
            .collect();
        m.set_owners(rows, 0);
        assert_eq!(m.owner_lines().len(), 1);
        assert_eq!(m.key(Key::Enter), Action::Redraw);
        assert_eq!(m.owner_lines().len(), 4);
        m.key(Key::Down);
        assert_eq!(m.key(Key::Enter), Action::Nothing, "a member is no group");
        m.key(Key::Up);
        m.key(Key::Char(' '));
        assert_eq!(m.owner_lines().len(), 1);
    }
}
