//! The live view in a real terminal: `kmem-trace watch` in a tmux pane (its
//! own tmux server socket, never the user's), a cgroup created and removed
//! under the test's parent, keys sent with `send-keys`, the screen read with
//! `capture-pane`. After `q` the alternate screen must be left, the summary
//! printed on the normal screen and the terminal back in cooked mode. At
//! 80×24 and 160×48, a kubelet-style pod, a job directory of 15 children (one row with its own: 16) and
//! a cgroup with a hostile name: every event line keeps its command, the job
//! is one owner row until opened, the name is escaped. A last test panics
//! inside the live view (`kmem-trace-tui-panic`) and checks the panic hook
//! restored the terminal the same way.
//! Needs: root, tmux, a memory cgroup controller, BPF (the panic test only
//! tmux). Run it under `flock /tmp/kmem-trace-kernel.lock` next to other root tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kmem_trace_tests::{kmem_trace_bin, require_root, wait_for, TestParent};

/// A private tmux server, killed (with what runs in it) when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A server on its own socket with one detached `cols`×`rows` session
    /// `kt` running `script`.
    fn start(socket: String, cols: u16, rows: u16, script: &str) -> Tmux {
        let t = Tmux { socket };
        let (x, y) = (cols.to_string(), rows.to_string());
        let new = t.cmd(&["new-session", "-d", "-x", &x, "-y", &y, "-s", "kt", script]);
        assert!(
            new.status.success(),
            "{}",
            String::from_utf8_lossy(&new.stderr)
        );
        t
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "kt"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "kt"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    fn format(&self, f: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["display-message", "-p", "-t", "kt", f]).stdout)
            .trim()
            .to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        // kill-server leaves the socket file behind (tmux(1): TMUX_TMPDIR,
        // default /tmp, then tmux-UID/NAME).
        let dir = std::env::var_os("TMUX_TMPDIR").unwrap_or_else(|| "/tmp".into());
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let _ = fs::remove_file(
            Path::new(&dir)
                .join(format!("tmux-{uid}"))
                .join(&self.socket),
        );
    }
}

fn has_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_some() {
        panic!("tmux is not installed (cargo xtask test installs it)");
    }
    ok
}

/// After the program left: the normal screen with the cursor shown, and the
/// terminal modes the shell wrote to `stty` (`stty -a`) cooked again.
fn assert_terminal_restored(t: &Tmux, stty: &Path) {
    assert_eq!(t.format("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(t.format("#{cursor_flag}"), "1", "cursor shown again");
    let mut modes = String::new();
    assert!(wait_for(Duration::from_secs(10), || {
        modes = fs::read_to_string(stty).unwrap_or_default();
        !modes.is_empty()
    }));
    let _ = fs::remove_file(stty);
    let words: Vec<&str> = modes
        .split(|c: char| c.is_whitespace() || c == ';')
        .collect();
    for sane in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(
            words.contains(&sane),
            "terminal not restored ({sane}): {modes}"
        );
    }
}

/// Runs `program` (shell words) in a new tmux session of `cols`×`rows`; when it
/// exits the shell prints `EXITED <code>`, writes the terminal modes (`stty
/// -a`) to the returned file, and stays so the pane can be read.
fn run_in_tmux(name: &str, cols: u16, rows: u16, program: &str) -> (Tmux, PathBuf) {
    let pid = std::process::id();
    let stty = std::env::temp_dir().join(format!("kmem-trace-{name}-stty-{pid}"));
    let script = format!(
        "{program}; echo \"EXITED $?\"; stty -a > '{}'; sleep 600",
        stty.display()
    );
    let t = Tmux::start(format!("kmem-trace-test-{name}-{pid}"), cols, rows, &script);
    (t, stty)
}

/// `kmem-trace watch` as [`run_in_tmux`] runs it.
fn watch_program() -> String {
    format!(
        "'{}' watch --no-history --zombie-after 1s",
        kmem_trace_bin().unwrap().display()
    )
}

fn wait_screen(t: &Tmux, what: &str, secs: u64) -> String {
    let mut last = String::new();
    let found = wait_for(Duration::from_secs(secs), || {
        last = t.screen();
        last.contains(what)
    });
    assert!(found, "{what:?} not on screen after {secs}s:\n{last}");
    last
}

#[test]
fn watch_in_a_terminal_shows_the_live_view_and_restores_the_terminal() {
    if !require_root("watch_in_a_terminal_shows_the_live_view_and_restores_the_terminal")
        || !has_tmux()
    {
        return;
    }
    let parent = TestParent::new("tui").unwrap();
    let (t, stty) = run_in_tmux("tui", 160, 48, &watch_program());

    let s = wait_screen(&t, "owners by zombies", 60);
    for want in [
        "kmem-trace watch · hooks",
        "live memcgs",
        "memcg IDs (of 65535)",
        "drops 0",
        "q quit",
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    assert_eq!(
        t.format("#{alternate_on}"),
        "1",
        "the live view uses the alternate screen"
    );

    // A cgroup made and removed shows in the tail and in the owner table.
    let c = parent.child("tui-churn").unwrap();
    parent.rmdir(&c).unwrap();
    wait_screen(&t, "tui-churn", 20);

    t.keys(&["s"]);
    wait_screen(&t, "owners by leak rate", 10);
    t.keys(&["/"]);
    t.keys(&["-l", "tui-churn"]);
    wait_screen(&t, "filter (owner or path): tui-churn", 10);
    t.keys(&["Enter"]);
    wait_screen(&t, "/ filter (tui-churn)", 10);

    t.keys(&["q"]);
    let s = wait_screen(&t, "EXITED 0", 30);
    assert!(
        s.contains("summary after"),
        "summary on the normal screen:\n{s}"
    );
    assert!(!s.contains("owners by"), "the live view is gone:\n{s}");
    assert_terminal_restored(&t, &stty);
    drop(t);
    cleanup_check(&parent.path);
}

/// An ESC-OSC that would retitle the terminal, as a cgroup name.
const HOSTILE: &str = "\x1b]0;pwn\x07";

/// `watch` at `cols`×`rows` while a pod's container cgroup (64-hex name
/// under `kubepods/burstable/pod<uid>`) comes and goes, 15 children of a job
/// directory stay live and a hostile-named cgroup is removed.
fn fits_the_terminal(cols: u16, rows: u16) {
    let tag = format!("tui{cols}");
    let mut parent = TestParent::new(&tag).unwrap();
    let (t, stty) = run_in_tmux(&tag, cols, rows, &watch_program());
    wait_screen(&t, "owners by zombies", 60);

    let uid = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
    let cid = "c1d5e7a9b3f2".repeat(6)[..64].to_string();
    let levels = [
        "kubepods".to_string(),
        "kubepods/burstable".to_string(),
        format!("kubepods/burstable/pod{uid}"),
        format!("kubepods/burstable/pod{uid}/{cid}"),
    ];
    let dirs: Vec<PathBuf> = levels.iter().map(|l| parent.child(l).unwrap()).collect();
    // A process in the container, so the tail has a command to show.
    parent.run_in(dirs.last().unwrap(), "true").unwrap();
    for d in dirs.iter().rev() {
        parent.rmdir(d).unwrap();
    }
    let job = parent.child("job-42").unwrap();
    let tasks: Vec<PathBuf> = (1..=15)
        .map(|i| parent.child(&format!("job-42/task-{i}")).unwrap())
        .collect();
    let evil = parent.child(HOSTILE).unwrap();
    parent.rmdir(&evil).unwrap();

    // Other cgroups of the host fill the table: filter to this test's.
    t.keys(&["/"]);
    t.keys(&["-l", &parent.name]);
    t.keys(&["Enter"]);
    let s = wait_screen(&t, "(16)", 20);
    assert!(s.contains("▸ "), "the job is one owner row:\n{s}");
    assert!(
        !owner_pane(&s).contains("task-5"),
        "its children are folded:\n{s}"
    );
    // The container's events name pod and container, and keep the command.
    let s = wait_screen(&t, "4d1/", 20);
    eprintln!("{cols}x{rows} live view:\n{s}");
    let events: Vec<&str> = s.lines().filter(|l| is_event_line(l)).collect();
    assert!(!events.is_empty(), "{s}");
    for l in events {
        assert!(has_command(l), "command cut off: {l}");
        if cols >= 150 {
            assert!(l.contains(" via "), "hook cut off: {l}");
        }
    }
    // The hostile name is shown escaped and did not retitle the pane.
    wait_screen(&t, "\\x1b]0;pwn\\x07", 20);
    assert_ne!(t.format("#{pane_title}"), "pwn");

    // One filter for both panes; then open the job's group.
    t.keys(&["Escape"]);
    // Alone, or the terminal reads ESC and the next key as Alt+key.
    wait_screen(&t, "/ filter · r residents", 10);
    t.keys(&["/"]);
    t.keys(&["-l", "job-42"]);
    t.keys(&["Enter"]);
    let s = wait_screen(&t, "filter (job-42)", 10);
    assert!(!s.contains("4d1/"), "the tail is filtered too:\n{s}");
    t.keys(&["Enter"]);
    let s = wait_screen(&t, "▾ ", 10);
    assert!(owner_pane(&s).contains("task-5"), "the group opened:\n{s}");
    eprintln!("{cols}x{rows} filtered and opened:\n{s}");
    t.keys(&["r"]);
    wait_screen(&t, "residents (r hides)", 10);

    t.keys(&["q"]);
    wait_screen(&t, "EXITED 0", 30);
    assert_terminal_restored(&t, &stty);
    drop(t);
    for d in tasks.iter().rev() {
        parent.rmdir(d).unwrap();
    }
    parent.rmdir(&job).unwrap();
    cleanup_check(&parent.path);
}

/// The owner table's lines of a screen.
fn owner_pane(s: &str) -> String {
    s.lines()
        .skip_while(|l| !l.contains("owners by"))
        .take_while(|l| !l.starts_with('└'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line of the event tail: `│HH:MM:SS`.
fn is_event_line(l: &str) -> bool {
    let c: Vec<char> = l.chars().take(9).collect();
    c.len() == 9 && c[0] == '│' && c[3] == ':' && c[6] == ':' && c[1].is_ascii_digit()
}

/// Whether the line still shows a command's `(pid)`.
fn has_command(l: &str) -> bool {
    l.split('(').skip(1).any(|p| {
        p.split_once(')')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[test]
fn the_live_view_fits_80x24() {
    if !require_root("the_live_view_fits_80x24") || !has_tmux() {
        return;
    }
    fits_the_terminal(80, 24);
}

#[test]
fn the_live_view_fits_160x48() {
    if !require_root("the_live_view_fits_160x48") || !has_tmux() {
        return;
    }
    fits_the_terminal(160, 48);
}

/// The parent holds nothing the view left behind.
fn cleanup_check(parent: &Path) {
    let left: Vec<_> = fs::read_dir(parent)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "cgroups left under {}: {left:?}",
        parent.display()
    );
}

#[test]
fn a_panic_in_the_live_view_restores_the_terminal() {
    // No kernel involved: only a terminal (tmux).
    if !has_tmux() {
        return;
    }
    let program = format!("'{}'", env!("CARGO_BIN_EXE_kmem-trace-tui-panic"));
    let (t, stty) = run_in_tmux("panic", 120, 40, &program);
    wait_screen(&t, "kmem-trace watch · hooks test", 20);
    assert_eq!(t.format("#{alternate_on}"), "1");
    let s = wait_screen(&t, "EXITED 101", 20);
    assert!(
        s.contains("deliberate panic inside the live view"),
        "panic message on the normal screen:\n{s}"
    );
    assert_terminal_restored(&t, &stty);
}
