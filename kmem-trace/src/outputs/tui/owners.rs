//! The owner table of the live view: owner rows in the chosen order, each
//! with its leak rate (net growth of its zombies per hour since the view's
//! first snapshot: "which pod leaks, how fast"), and non-pod owners grouped
//! by their parent directory (a job directory with 15 children is one row,
//! expanded with a key). Pure: rows in, lines out.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::outputs::aggregate::OwnerRow;

/// A leak rate needs this much of the session (as the ID forecast does).
pub const MIN_LEAK_WINDOW_NS: u64 = 60_000_000_000;

/// How the owner table is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Zombies,
    Leak,
    Pinned,
    Dying,
    Name,
}

impl SortKey {
    /// The next order (`s` in the live view).
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Zombies => SortKey::Leak,
            SortKey::Leak => SortKey::Pinned,
            SortKey::Pinned => SortKey::Dying,
            SortKey::Dying => SortKey::Name,
            SortKey::Name => SortKey::Zombies,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Zombies => "zombies",
            SortKey::Leak => "leak rate",
            SortKey::Pinned => "pinned bytes",
            SortKey::Dying => "dying",
            SortKey::Name => "name",
        }
    }
}

/// Zombies per owner at the view's first snapshot, to measure growth from.
#[derive(Clone, Debug, Default)]
pub struct Leak {
    start_ns: Option<u64>,
    now_ns: u64,
    baseline: HashMap<String, u64>,
}

fn key(r: &OwnerRow) -> String {
    format!("{}\0{}\0{}\0{}", r.kind, r.namespace, r.pod, r.container)
}

impl Leak {
    /// A snapshot's rows at monotonic `now_ns`; the first one is the baseline
    /// (an owner missing from it had no zombies then).
    pub fn observe(&mut self, rows: &[OwnerRow], now_ns: u64) {
        if self.start_ns.is_none() {
            self.start_ns = Some(now_ns);
            self.baseline = rows.iter().map(|r| (key(r), r.zombies)).collect();
        }
        self.now_ns = now_ns;
    }

    /// Hours since the baseline, once there is a minute of it.
    pub fn hours(&self) -> Option<f64> {
        let span = self.now_ns.saturating_sub(self.start_ns?);
        (span >= MIN_LEAK_WINDOW_NS).then(|| span as f64 / 3.6e12)
    }

    /// Zombies gained (or lost) since the baseline.
    pub fn growth(&self, r: &OwnerRow) -> i64 {
        r.zombies as i64 - self.baseline.get(&key(r)).copied().unwrap_or(0) as i64
    }
}

/// What a line of the table is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// One owner.
    Owner,
    /// Owners under one parent directory (`row` holds their sums).
    Group { members: usize, expanded: bool },
    /// An owner shown inside its expanded group.
    Member,
}

/// One line of the owner table.
#[derive(Clone, Debug)]
pub struct OwnerLine {
    /// For a group: `container` and `path` are the parent, counts summed.
    pub row: OwnerRow,
    /// Net zombies since the view started.
    pub growth: i64,
    pub kind: LineKind,
}

impl OwnerLine {
    /// Zombies per hour over the session; `None` before a minute of it.
    pub fn leak_per_hour(&self, leak: &Leak) -> Option<f64> {
        leak.hours().map(|h| self.growth as f64 / h)
    }
}

/// Whether `needle` (lower case) is in the row's owner name or path.
pub fn row_matches(r: &OwnerRow, needle: &str) -> bool {
    needle.is_empty()
        || r.label().to_lowercase().contains(needle)
        || r.path.to_lowercase().contains(needle)
        || r.workload.to_lowercase().contains(needle)
}

/// The parent a non-pod owner groups under: the directory of its path, not
/// the root (top-level cgroups stay rows of their own).
fn parent_of(r: &OwnerRow) -> Option<&str> {
    if r.kind != "path" {
        return None;
    }
    match r.path.rsplit_once('/') {
        Some((p, _)) if !p.is_empty() => Some(p),
        _ => None,
    }
}

/// Names in natural order: digit runs compare as numbers (`task-2` before
/// `task-10`).
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut digits = None;
        for (i, c) in s.char_indices() {
            let d = c.is_ascii_digit();
            if digits.is_some_and(|x| x != d) {
                out.push((digits == Some(true), &s[start..i]));
                start = i;
            }
            digits = Some(d);
        }
        out.push((digits == Some(true), &s[start..]));
        out
    }
    for (x, y) in runs(a).into_iter().zip(runs(b)) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then(x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.cmp(b)
}

fn order(a: &OwnerLine, b: &OwnerLine, sort: SortKey) -> std::cmp::Ordering {
    let (x, y) = (&a.row, &b.row);
    let by = match sort {
        SortKey::Zombies => y
            .zombies
            .cmp(&x.zombies)
            .then(y.pinned_bytes.cmp(&x.pinned_bytes)),
        SortKey::Leak => b.growth.cmp(&a.growth).then(y.zombies.cmp(&x.zombies)),
        SortKey::Pinned => y
            .pinned_bytes
            .cmp(&x.pinned_bytes)
            .then(y.zombies.cmp(&x.zombies)),
        SortKey::Dying => y.dying.cmp(&x.dying).then(y.zombies.cmp(&x.zombies)),
        SortKey::Name => std::cmp::Ordering::Equal,
    };
    by.then_with(|| natural(&x.label(), &y.label()))
}

/// The table's lines: rows matching `needle` (lower case), path owners with
/// a shared parent folded into one group line with the parent's own row
/// (members listed after it when its parent is in `expanded`), each level in
/// `sort` order.
pub fn lines(
    rows: &[OwnerRow],
    needle: &str,
    expanded: &HashSet<String>,
    sort: SortKey,
    leak: &Leak,
) -> Vec<OwnerLine> {
    let matched: Vec<&OwnerRow> = rows.iter().filter(|r| row_matches(r, needle)).collect();
    let count = |skip: &dyn Fn(&OwnerRow) -> bool| {
        let mut n: HashMap<&str, usize> = HashMap::new();
        for p in matched
            .iter()
            .filter(|r| !skip(r))
            .filter_map(|r| parent_of(r))
        {
            *n.entry(p).or_default() += 1;
        }
        n
    };
    // Directories with two children or more; a directory that is one of
    // those does not count as a child of its own parent.
    let first = count(&|_| false);
    let dir =
        |r: &OwnerRow| r.kind == "path" && first.get(r.path.as_str()).is_some_and(|n| *n >= 2);
    let children = count(&dir);
    let is_group = |p: &str| children.get(p).is_some_and(|n| *n >= 2);
    let mut top = Vec::new();
    let mut groups: BTreeMap<&str, Vec<OwnerLine>> = BTreeMap::new();
    for r in matched {
        let line = OwnerLine {
            row: r.clone(),
            growth: leak.growth(r),
            kind: LineKind::Owner,
        };
        // The job directory's own cgroup belongs to its group too.
        let own = (r.kind == "path" && is_group(&r.path)).then_some(r.path.as_str());
        match own.or(parent_of(r).filter(|p| is_group(p))) {
            Some(p) => groups.entry(p).or_default().push(line),
            None => top.push(line),
        }
    }
    let mut members = HashMap::new();
    for (parent, mut v) in groups {
        let mut sum = OwnerRow {
            namespace: v[0].row.namespace.clone(),
            container: parent.to_string(),
            path: parent.to_string(),
            kind: "group",
            ..OwnerRow::default()
        };
        let mut growth = 0;
        for l in &mut v {
            sum.live += l.row.live;
            sum.dying += l.row.dying;
            sum.zombies += l.row.zombies;
            sum.pinned_bytes += l.row.pinned_bytes;
            growth += l.growth;
            l.kind = LineKind::Member;
        }
        let open = expanded.contains(parent);
        top.push(OwnerLine {
            row: sum,
            growth,
            kind: LineKind::Group {
                members: v.len(),
                expanded: open,
            },
        });
        if open {
            v.sort_by(|a, b| order(a, b, sort));
            members.insert(parent.to_string(), v);
        }
    }
    top.sort_by(|a, b| order(a, b, sort));
    let mut out = Vec::with_capacity(top.len());
    for l in top {
        let inner = members
            .remove(&l.row.path)
            .filter(|_| l.kind != LineKind::Owner);
        out.push(l);
        out.extend(inner.into_iter().flatten());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, pod: &str, c: &str, zombies: u64) -> OwnerRow {
        OwnerRow {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
            kind: "pod",
            zombies,
            dying: zombies,
            path: format!("/kubepods/burstable/pod-{pod}/{c}"),
            ..OwnerRow::default()
        }
    }

    fn path(p: &str, zombies: u64, pinned: u64) -> OwnerRow {
        OwnerRow {
            namespace: "none".into(),
            container: p.into(),
            kind: "path",
            zombies,
            dying: zombies,
            pinned_bytes: pinned,
            path: p.into(),
            ..OwnerRow::default()
        }
    }

    #[test]
    fn a_job_directory_is_one_row_until_expanded() {
        let mut rows: Vec<OwnerRow> = (1..=15)
            .map(|i| path(&format!("/jobs/job-42/task-{i}"), 1, 4096))
            .collect();
        rows.push(path("/jobs/job-42", 0, 0));
        rows.push(path("/jobs/other", 3, 0));
        rows.push(path("/top-level", 2, 0));
        rows.push(pod("shop", "cart-1", "main", 5));
        let leak = Leak::default();
        let none = HashSet::new();
        let l = lines(&rows, "", &none, SortKey::Zombies, &leak);
        let names: Vec<String> = l.iter().map(|l| l.row.label()).collect();
        assert_eq!(
            names,
            [
                "/jobs/job-42",
                "shop/cart-1/main",
                "/jobs/other",
                "/top-level"
            ],
            "the group sums 15 zombies and leads"
        );
        assert_eq!(l[0].row.zombies, 15);
        assert_eq!(l[0].row.pinned_bytes, 15 * 4096);
        assert_eq!(
            l[0].kind,
            LineKind::Group {
                members: 16,
                expanded: false
            },
            "the directory's own cgroup is in its group"
        );
        let open: HashSet<String> = ["/jobs/job-42".to_string()].into();
        let l = lines(&rows, "", &open, SortKey::Name, &leak);
        assert_eq!(l.len(), 4 + 16);
        assert_eq!(l[0].row.label(), "/jobs/job-42");
        assert!(l[1..17].iter().all(|m| m.kind == LineKind::Member));
        assert_eq!(
            l[1].row.label(),
            "/jobs/job-42",
            "its own row first by name"
        );
        assert_eq!(l[2].row.label(), "/jobs/job-42/task-1");
        assert_eq!(l[3].row.label(), "/jobs/job-42/task-2", "natural order");
        // The filter sees members by path; a group of one is a plain row.
        let l = lines(&rows, "task-7", &none, SortKey::Zombies, &leak);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kind, LineKind::Owner);
        assert_eq!(l[0].row.label(), "/jobs/job-42/task-7");
        // Pods match by path too (the filter is the tail's).
        let l = lines(&rows, "pod-cart", &none, SortKey::Zombies, &leak);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn leak_is_zombie_growth_per_hour_after_a_minute() {
        let mut leak = Leak::default();
        let start = vec![
            pod("shop", "cart-1", "main", 4),
            pod("shop", "web-1", "main", 2),
        ];
        leak.observe(&start, 1_000);
        assert_eq!(leak.hours(), None);
        // Half an hour later: cart gained 6, web lost one, a new pod has 3.
        let now = vec![
            pod("shop", "cart-1", "main", 10),
            pod("shop", "web-1", "main", 1),
            pod("batch", "etl-1", "run", 3),
        ];
        leak.observe(&now, 1_000 + 1_800_000_000_000);
        let l = lines(&now, "", &HashSet::new(), SortKey::Leak, &leak);
        let rates: Vec<(String, f64)> = l
            .iter()
            .map(|l| (l.row.pod.clone(), l.leak_per_hour(&leak).unwrap()))
            .collect();
        assert_eq!(
            rates,
            [
                ("cart-1".to_string(), 12.0),
                ("etl-1".to_string(), 6.0),
                ("web-1".to_string(), -2.0)
            ]
        );
    }

    #[test]
    fn names_sort_naturally() {
        use std::cmp::Ordering::*;
        assert_eq!(natural("task-2", "task-10"), Less);
        assert_eq!(natural("task-10", "task-9"), Greater);
        assert_eq!(natural("a", "a"), Equal);
        assert_eq!(natural("a01", "a1"), Less, "ties fall back to the text");
        assert_eq!(natural("", "x"), Less);
    }

    #[test]
    fn sort_keys_cycle() {
        let mut k = SortKey::default();
        let mut seen = vec![k];
        for _ in 0..4 {
            k = k.next();
            seen.push(k);
        }
        assert_eq!(k.next(), SortKey::Zombies);
        assert_eq!(seen.len(), 5);
        assert_eq!(SortKey::Leak.name(), "leak rate");
    }
}
