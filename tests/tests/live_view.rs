//! The live view in a real terminal: `kmem-trace watch` in a tmux pane (its
//! own tmux server socket, never the user's), a cgroup created and removed
//! under the test's parent, keys sent with `send-keys`, the screen read with
//! `capture-pane`. After `q` the alternate screen must be left, the summary
//! printed on the normal screen and the terminal back in cooked mode. A
//! second test panics inside the live view (`kmem-trace-tui-panic`) and
//! checks the panic hook restored the terminal the same way.
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
    let stty: PathBuf = std::env::temp_dir().join(format!("{}-stty", parent.name));
    let bin = kmem_trace_bin().unwrap();
    // After kmem-trace exits the shell records its exit code and the terminal
    // mode, then stays so the pane can be read.
    let script = format!(
        "'{}' watch --no-history --zombie-after 1s; echo \"EXITED $?\"; stty -a > '{}'; sleep 600",
        bin.display(),
        stty.display()
    );
    let t = Tmux::start(
        format!("kmem-trace-test-{}", std::process::id()),
        160,
        50,
        &script,
    );

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
    wait_screen(&t, "owners by pinned bytes", 10);
    t.keys(&["/"]);
    t.keys(&["-l", "tui-churn"]);
    wait_screen(&t, "filter: tui-churn", 10);
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
    let stty = std::env::temp_dir().join(format!("kmem-trace-panic-stty-{}", std::process::id()));
    let script = format!(
        "'{}'; echo \"EXITED $?\"; stty -a > '{}'; sleep 600",
        env!("CARGO_BIN_EXE_kmem-trace-tui-panic"),
        stty.display()
    );
    let t = Tmux::start(
        format!("kmem-trace-test-panic-{}", std::process::id()),
        120,
        40,
        &script,
    );
    wait_screen(&t, "kmem-trace watch · hooks test", 20);
    assert_eq!(t.format("#{alternate_on}"), "1");
    let s = wait_screen(&t, "EXITED 101", 20);
    assert!(
        s.contains("deliberate panic inside the live view"),
        "panic message on the normal screen:\n{s}"
    );
    assert_terminal_restored(&t, &stty);
}
