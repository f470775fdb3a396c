//! Reliability on the real kernel: drops under a full ring buffer are counted
//! and shown, SIGTERM under load exits cleanly and leaves no BPF program or
//! link behind, SIGUSR1 writes the summary so far and the watch goes on, and bad input gets the exact error a user should see.
//! Needs: root, a memory cgroup controller, BPF with tp_btf, bpftool.

use std::{collections::HashSet, process::Command, time::Duration};

use kmem_trace_tests::{
    json_lines, kmem_trace_bin, require_root, wait_for, zombies_json, Scratch, TestParent, Tracer,
};
use serde_json::Value;

/// IDs of loaded BPF programs whose name starts with `kt_` (kmem-trace's prefix).
fn our_programs() -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool");
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("kt_")))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Program IDs that BPF links point at.
fn linked_programs() -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    links.iter().filter_map(|l| l["prog_id"].as_u64()).collect()
}

/// mkdir + rmdir `n` memcgs under `parent` as fast as possible.
fn churn(parent: &TestParent, n: usize) {
    for i in 0..n {
        let c = parent.child(&format!("c{i}")).unwrap();
        parent.rmdir(&c).unwrap();
    }
}

#[test]
fn a_tiny_ring_buffer_counts_and_shows_drops() {
    if !require_root("a_tiny_ring_buffer_counts_and_shows_drops") {
        return;
    }
    let parent = TestParent::new("drops").unwrap();
    let mut tracer = Tracer::start(&[
        "watch",
        "--json",
        "--no-history",
        "--ring-buffer-size",
        "4096",
    ])
    .unwrap();
    // Freeze the consumer so the 4 KiB ring (15 records) overflows for sure.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    const N: usize = 100;
    churn(&parent, N);
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out) = tracer.stop().unwrap();
    assert_eq!(code, Some(0));
    let events = json_lines(&out).unwrap();
    let summary = events.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    let drops = summary["drops"].as_u64().unwrap();
    assert!(
        drops > 0,
        "a 4 KiB ring with a stopped reader must drop: {summary}"
    );
    // Shown live, not only in the summary.
    assert!(
        tracer.stderr.iter().any(|l| l.contains("events dropped")),
        "{:?}",
        tracer.stderr
    );
    // Nothing vanished: what arrived plus what was counted as dropped covers
    // the churn's alloc and offline records (drops count records; one record
    // also carries online and kmem_activate where the hook sees them at once).
    let prefix = format!("/{}/", parent.name);
    let seen = events
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .filter(|e| ["alloc", "offline"].contains(&e["kind"].as_str().unwrap_or("")))
        .count() as u64;
    assert!(
        seen + drops >= 2 * N as u64,
        "seen {seen} + drops {drops} < {}",
        2 * N
    );
}

#[test]
fn sigterm_under_load_exits_zero_and_detaches_everything() {
    if !require_root("sigterm_under_load_exits_zero_and_detaches_everything") {
        return;
    }
    let parent = TestParent::new("sigterm").unwrap();
    let mut tracer = Tracer::start(&["watch", "--no-history"]).unwrap();
    let ours = our_programs();
    assert!(!ours.is_empty(), "no kt_ programs loaded while watching");
    assert!(
        !linked_programs().is_disjoint(&ours),
        "no links to kmem-trace programs while watching"
    );
    // SIGTERM in the middle of a churn.
    let churner = std::thread::scope(|s| {
        let h = s.spawn(|| churn(&parent, 300));
        std::thread::sleep(Duration::from_millis(200));
        let r = tracer.stop();
        h.join().unwrap();
        r
    });
    let (code, out) = churner.unwrap();
    assert_eq!(code, Some(0), "stderr: {:?}", tracer.stderr);
    assert!(out.contains("summary after"), "no summary in: {out}");
    // The kernel frees a program after an RCU grace period once its last fd
    // closed (bpf_prog_put_deferred), so allow it a moment.
    let gone = wait_for(Duration::from_secs(5), || our_programs().is_disjoint(&ours));
    assert!(
        gone,
        "programs left: {:?}",
        our_programs().intersection(&ours).collect::<Vec<_>>()
    );
    assert!(
        linked_programs().is_disjoint(&ours),
        "links left to kmem-trace programs"
    );
}

#[test]
fn sigusr1_writes_the_summary_so_far_and_the_watch_goes_on() {
    if !require_root("sigusr1_writes_the_summary_so_far_and_the_watch_goes_on") {
        return;
    }
    let parent = TestParent::new("usr1").unwrap();
    let mut tracer = Tracer::start(&["watch", "--json", "--no-history"]).unwrap();
    let prefix = format!("/{}/", parent.name);
    let ours = |evs: &[Value], kind: &str| {
        evs.iter()
            .filter(|e| e["kind"] == kind)
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
            .count()
    };
    churn(&parent, 3);
    assert!(wait_for(Duration::from_secs(10), || ours(
        &tracer.json(),
        "offline"
    ) == 3));
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGUSR1) };
    let snapshot = || tracer.json().into_iter().find(|e| e["kind"] == "snapshot");
    assert!(
        wait_for(Duration::from_secs(10), || snapshot().is_some()),
        "no snapshot record"
    );
    let snap = snapshot().unwrap();
    // The snapshot counts what came before it: our three allocs at least.
    assert!(snap["events"]["alloc"].as_u64().unwrap() >= 3, "{snap}");
    churn(&parent, 2);
    assert!(wait_for(Duration::from_secs(10), || ours(
        &tracer.json(),
        "offline"
    ) == 5));
    let (code, out) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "stderr: {:?}", tracer.stderr);
    let events = json_lines(&out).unwrap();
    let summary = events.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert!(
        summary["events"]["alloc"].as_u64() >= Some(snap["events"]["alloc"].as_u64().unwrap() + 2),
        "snapshot {snap}, summary {summary}"
    );
}

/// Runs the binary with `args`; returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(kmem_trace_bin().unwrap())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_values_are_usage_errors() {
    let (code, err) = run(&["watch", "--frobnicate"]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: unexpected argument '--frobnicate' found"),
        "{err}"
    );
    let (code, err) = run(&["watch", "--hooks", "magic"]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: invalid value 'magic' for '--hooks <HOOKS>'"),
        "{err}"
    );
    let (code, err) = run(&["watch", "--zombie-after", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid duration \"soon\""), "{err}");
    let (code, err) = run(&["watch", "--ring-buffer-size", "1000"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("ring buffer size must be a power of two of at least 4096 bytes, got 1000"),
        "{err}"
    );
    let (code, err) = run(&["replay", "/nonexistent.kmt"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "kmem-trace: reading /nonexistent.kmt: No such file or directory (os error 2)"
    );
}

#[test]
fn missing_btf_gives_the_btf_hint() {
    if !require_root("missing_btf_gives_the_btf_hint") {
        return;
    }
    let (code, err) = run(&["watch", "--btf", "/nonexistent/vmlinux"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "kmem-trace: no kernel BTF at /nonexistent/vmlinux: i/o error: No such file or directory (os error 2); \
         this kernel needs CONFIG_DEBUG_INFO_BTF, or pass a matching BTF file with --btf FILE"
    );
}

#[test]
fn a_layout_without_a_needed_member_is_named() {
    if !require_root("a_layout_without_a_needed_member_is_named") {
        return;
    }
    let btf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kmem-trace/tests/fixtures/btf/no-kn-name.btf"
    );
    let (code, err) = run(&["watch", "--btf", btf]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        "kmem-trace: kernel layout lacks struct kernfs_node member `name` (tried: name); kmem-trace does not \
         support this kernel layout yet, or --btf points at the BTF of another kernel"
    );
}

#[test]
fn not_root_names_the_missing_capabilities() {
    if !require_root("not_root_names_the_missing_capabilities") {
        return;
    }
    // Drop to nobody with setpriv (util-linux); the binary must be readable by it.
    let bin = kmem_trace_bin().unwrap();
    let copy = std::env::temp_dir().join(format!("kmem-trace-nonroot-{}", std::process::id()));
    std::fs::copy(&bin, &copy).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .arg("watch")
        .output()
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "kmem-trace: needs root (or CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN); missing: CAP_BPF, \
         CAP_PERFMON; run it with sudo"
    );
}

/// Whether a mounted cgroup2 (at /sys/fs/cgroup on a pure v2 host, at
/// /sys/fs/cgroup/unified on a hybrid one, or anywhere else) offers the
/// memory controller.
fn cgroup2_offers_memory() -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2")).then(|| pre.split(' ').nth(4))?
        })
        .any(|mnt| {
            std::fs::read_to_string(format!("{mnt}/cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        })
}

#[test]
fn no_memory_controller_mounted_is_a_clear_error() {
    if !require_root("no_memory_controller_mounted_is_a_clear_error") {
        return;
    }
    // Decided before running anything: where cgroup2 offers memory, taking
    // the v1 hierarchies away leaves a memory controller, and `watch` would
    // trace (bounded by --duration all the same, so it can never hang).
    if cgroup2_offers_memory() {
        eprintln!("skipped: a mounted cgroup2 offers the memory controller here");
        return;
    }
    // In a private mount namespace only: unmount every v1 memory hierarchy, as on
    // a cgroup-v2-only host whose v2 root does not offer the memory controller.
    let bin = kmem_trace_bin().unwrap();
    let script = format!(
        "awk '$9==\"cgroup\" && $NF ~ /(^|,)memory(,|$)/ {{print $5}}' /proc/self/mountinfo | xargs -r -n1 umount && \
         exec {} watch --duration 5s --no-history",
        bin.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "kmem-trace: no memory cgroup controller is mounted (looked in /proc/self/mountinfo); mount cgroup v1 \
         `memory` or cgroup2 with the memory controller"
    );
}

/// A history file that is not a database, for `zombies` and `watch`.
fn corrupt_db() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("kmem-trace-corrupt-{}.db", std::process::id()));
    std::fs::write(
        &p,
        b"SQLite format 3\0but then garbage, not a database at all".repeat(100),
    )
    .unwrap();
    p
}

#[test]
fn a_corrupt_history_database_is_named_with_the_fix() {
    let db = corrupt_db();
    let want = format!(
        "kmem-trace: history database {} is not a SQLite database (corrupt, or another file); move it aside \
         or pass another --db PATH",
        db.display()
    );
    let (code, err) = run(&["zombies", "--db", db.to_str().unwrap()]);
    assert_eq!((code, err.trim()), (Some(1), want.as_str()));
    if require_root("a_corrupt_history_database_is_named_with_the_fix (watch)") {
        let (code, err) = run(&["watch", "--duration", "1s", "--db", db.to_str().unwrap()]);
        assert_eq!(
            (code, err.lines().last().unwrap_or_default()),
            (Some(1), want.as_str()),
            "{err}"
        );
        // The writer took the lock (a sidecar file, kept like any lock file).
        let _ = std::fs::remove_file(format!("{}.lock", db.display()));
    }
    std::fs::remove_file(&db).unwrap();
}

#[test]
fn a_locked_history_database_is_named_with_the_fix() {
    let db = std::env::temp_dir().join(format!("kmem-trace-locked-{}.db", std::process::id()));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let want = format!(
        "kmem-trace: history database {} is locked by another process (another kmem-trace writing it?); stop \
         that one, or pass another --db PATH",
        db.display()
    );
    let (code, err) = run(&["zombies", "--db", db.to_str().unwrap()]);
    assert_eq!((code, err.trim()), (Some(1), want.as_str()));
    drop(conn);
    let _ = std::fs::remove_file(&db);
}

/// `kmem-trace zombies --json --db DB` entries whose path lies under `parent`.
fn our_zombies(db: &std::path::Path, parent: &str) -> Vec<Value> {
    let v = zombies_json(db).unwrap();
    let prefix = format!("/{parent}/");
    v["zombies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|z| z["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .cloned()
        .collect()
}

#[test]
fn kill_9_during_churn_then_restart_loses_no_zombie_and_counts_none_twice() {
    if !require_root("kill_9_during_churn_then_restart_loses_no_zombie_and_counts_none_twice") {
        return;
    }
    const N: usize = 40;
    let mut parent = TestParent::new("kill9").unwrap();
    let scratch =
        Scratch::new(std::env::temp_dir().join(format!("kmem-trace-kill9-{}", std::process::id())))
            .unwrap();
    let db = scratch.path().join("history.db");
    let shm = std::path::PathBuf::from(format!("/dev/shm/{}", parent.name));
    std::fs::create_dir_all(&shm).unwrap();
    let args = [
        "watch",
        "--json",
        "--db",
        db.to_str().unwrap(),
        "--zombie-after",
        "1s",
    ];
    let mut tracer = Tracer::start(&args).unwrap();
    // Every third memcg keeps a tmpfs file: it stays dying after rmdir.
    let pinned = |i: usize| i.is_multiple_of(3);
    let mut killed = false;
    for i in 0..N {
        let cg = parent.child(&format!("c{i}")).unwrap();
        let f = shm.join(format!("f{i}"));
        parent.track_file(&f);
        parent
            .run_in(&cg, &format!("head -c 65536 /dev/zero > '{}'", f.display()))
            .unwrap();
        if !pinned(i) {
            std::fs::remove_file(&f).unwrap();
        }
        parent.rmdir(&cg).unwrap();
        if i == N / 2 {
            // Let the writer flush a batch, then kill the tracer mid-churn.
            std::thread::sleep(Duration::from_millis(1500));
            let (code, _) = tracer.stop_with(libc::SIGKILL).unwrap();
            assert_eq!(code, None, "killed by a signal, no exit code");
            killed = true;
        }
    }
    assert!(killed);
    // Restart: the census finds the dying memcgs, the history keeps what was known.
    let mut tracer = Tracer::start(&args).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{:?}", tracer.stderr);

    let zombies = our_zombies(&db, &parent.name);
    let mut paths: Vec<&str> = zombies.iter().filter_map(|z| z["path"].as_str()).collect();
    paths.sort();
    let mut want: Vec<String> = (0..N)
        .filter(|i| pinned(*i))
        .map(|i| format!("/{}/c{i}", parent.name))
        .collect();
    want.sort();
    assert_eq!(
        paths,
        want.iter().map(String::as_str).collect::<Vec<_>>(),
        "no zombie lost, none twice"
    );
    // Memcgs created before the kill keep their creator from the history.
    let first = zombies
        .iter()
        .find(|z| z["path"].as_str() == Some(&format!("/{}/c0", parent.name)))
        .unwrap();
    assert!(
        first.to_string().contains("\"sh\""),
        "creator/resident of c0 kept: {first}"
    );
    let _ = std::fs::remove_dir_all(&shm);
}

#[test]
fn two_writers_on_one_history_the_second_is_refused_and_zombies_sees_the_first() {
    if !require_root("two_writers_on_one_history_the_second_is_refused_and_zombies_sees_the_first")
    {
        return;
    }
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-writers-{}", std::process::id())),
    )
    .unwrap();
    let db = dir.path().join("history.db");
    let db_s = db.to_str().unwrap();
    let mut first = Tracer::start(&["watch", "--json", "--db", db_s]).unwrap();
    // The second is refused before it loads anything, naming the first.
    let (code, err) = run(&["watch", "--duration", "2s", "--db", db_s]);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "kmem-trace: history database {db_s} is being written by another kmem-trace (pid {}); one tracer \
         writes a history: stop that one, read its history with `kmem-trace zombies`, or run this one with \
         another --db PATH or --no-history",
        first.pid()
    );
    assert_eq!(err.trim(), want);
    // Asked to, it runs without history instead, and says so.
    let (code, err) = run(&[
        "watch",
        "--duration",
        "1s",
        "--no-history-if-busy",
        "--db",
        db_s,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "kmem-trace: history {db_s} is being written by another kmem-trace (pid {}); running without \
             history (--no-history-if-busy)",
            first.pid()
        )) && !err.contains("memcgs restored"),
        "{err}"
    );
    // A reader says the first one writes, whatever the other's run left in the meta.
    let z = zombies_json(&db).unwrap();
    assert_eq!(z["tracer"]["running"], Value::Bool(true), "{z}");
    assert_eq!(z["tracer"]["pid"], Value::from(first.pid()), "{z}");
    let (code, _) = first.stop().unwrap();
    assert_eq!(code, Some(0));
    let z = zombies_json(&db).unwrap();
    assert_eq!(
        (&z["tracer"]["running"], &z["tracer"]["stopped"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{z}"
    );
}

#[test]
fn sigterm_during_start_up_stops_cleanly() {
    if !require_root("sigterm_during_start_up_stops_cleanly") {
        return;
    }
    let child = Command::new(kmem_trace_bin().unwrap())
        .args(["watch", "--json", "--no-history"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // As soon as SIGTERM is caught (SigCgt bit 15), long before the probes
    // are loaded: the default action then would be exit 143 with no summary.
    let caught = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            })
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !caught() {
        assert!(std::time::Instant::now() < deadline, "SIGTERM never caught");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Caught before any program is loaded: the signal falls into start-up.
    let progs = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy() == "anon_inode:bpf-prog")
        .count();
    assert_eq!(progs, 0, "handlers installed only after the probes loaded");
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert!(
        lines.last().is_some_and(|l| l["kind"] == "summary"),
        "no summary: {lines:?}"
    );
}

/// Runs `kmem-trace ARGS` as nobody (a copy of the binary it can execute).
fn run_as_nobody(args: &[&str]) -> (Option<i32>, String, String) {
    let bin = kmem_trace_bin().unwrap();
    let copy = std::env::temp_dir().join(format!("kmem-trace-nobody-{}", std::process::id()));
    std::fs::copy(&bin, &copy).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(args)
        .output()
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unreadable_and_read_only_histories_are_named_or_read() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("unreadable_and_read_only_histories_are_named_or_read") {
        return;
    }
    let dir =
        Scratch::new(std::env::temp_dir().join(format!("kmem-trace-ro-{}", std::process::id())))
            .unwrap();
    let perm = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    perm(dir.path(), 0o755);
    // A history as the writer leaves it (WAL mode, 0600), in a 0700
    // directory like /var/lib/kmem-trace.
    let private = dir.path().join("private");
    let db = private.join("history.db");
    drop(kmem_trace::store::Store::open(&db).unwrap());
    let (code, _, err) = run_as_nobody(&["zombies", "--db", db.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "kmem-trace: history database {}: Permission denied (os error 13); it (or a directory above it, \
             /var/lib/kmem-trace is 0700) is not readable by this user: run as root, or pass another --db PATH",
            db.display()
        )
    );
    // A read-only copy nobody can read but not write beside (no -shm can be
    // made): read, not "Error code 14".
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let copy = ro.join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    perm(&copy, 0o444);
    perm(&ro, 0o555);
    let (code, out, err) = run_as_nobody(&["zombies", "--json", "--db", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["zombies"].is_array(), "{v}");
    assert!(!ro.join("copy.db-shm").exists());
    perm(&ro, 0o755);
}

#[test]
fn zombies_into_a_closed_pipe_is_quiet_and_succeeds() {
    use kmem_trace::{
        lifecycle::{Memcg, Origin, Stamp, State},
        store::{Record, Store},
    };
    let dir =
        Scratch::new(std::env::temp_dir().join(format!("kmem-trace-epipe-{}", std::process::id())))
            .unwrap();
    let db = dir.path().join("history.db");
    // Held open (the writer lock) so `zombies` takes it for a running tracer
    // and reads only the history: no census, no root needed.
    let mut store = Store::open(&db).unwrap();
    let batch: Vec<Record> = (0..3000u64)
        .map(|i| {
            let mut m = Memcg::new(0x10_0000 + i * 0x1000, i as u32 + 1, Origin::Traced);
            m.state = State::Dying;
            m.cgroup_id = 1000 + i;
            m.hierarchy_id = 4;
            m.offline_ns = Stamp::at(1_000_000);
            m.path = format!("/epipe/job-{i:05}-with-a-long-enough-name").into();
            Record {
                memcg: m,
                attribution: None,
            }
        })
        .collect();
    store
        .write(&batch, 1_700_000_000_000_000_000, 1_700_000_100_000_000_000)
        .unwrap();
    for json in [false, true] {
        let mut cmd = Command::new(kmem_trace_bin().unwrap());
        cmd.args(["zombies", "--db", db.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -c 100`: read a little, then close the pipe.
        let mut first = [0u8; 100];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            (out.status.code(), err.trim()),
            (Some(0), ""),
            "json {json}"
        );
    }
    drop(store);
}

#[test]
fn after_drops_a_recheck_brings_the_state_back_to_the_kernels() {
    if !require_root("after_drops_a_recheck_brings_the_state_back_to_the_kernels") {
        return;
    }
    let parent = TestParent::new("recheck").unwrap();
    let dir = Scratch::new(std::env::temp_dir().join(format!("{}-db", parent.name))).unwrap();
    let db = dir.path().join("history.db");
    let mut tracer = Tracer::start(&[
        "watch",
        "--json",
        "--db",
        db.to_str().unwrap(),
        "--ring-buffer-size",
        "4096",
    ])
    .unwrap();
    const N: usize = 60;
    let children: Vec<_> = (0..N)
        .map(|i| {
            let c = parent.child(&format!("r{i}")).unwrap();
            std::thread::sleep(Duration::from_millis(20)); // a 4 KiB ring: no drops here
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Their removal is lost: the reader is stopped and the ring holds 15 records.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    for c in &children {
        parent.rmdir(c).unwrap();
    }
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    let rechecked = wait_for(Duration::from_secs(30), || {
        tracer.json().iter().any(|l| l["kind"] == "recheck")
    });
    let records = tracer.json();
    assert!(
        records.iter().any(|l| l["kind"] == "drops"),
        "drops are a record of the stream"
    );
    assert!(rechecked, "no recheck after drops: {:?}", tracer.stderr);
    std::thread::sleep(Duration::from_millis(1500)); // the history's next flush
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{:?}", tracer.stderr);
    // No memcg of ours is still live in the tracer's history.
    let store = kmem_trace::store::Store::open_existing(&db).unwrap();
    let prefix = format!("/{}/", parent.name);
    let ours: Vec<(String, String)> = store
        .all(0)
        .unwrap()
        .into_iter()
        .filter(|r| r.memcg.path.starts_with(&prefix))
        .map(|r| (r.memcg.path.to_string(), r.state))
        .collect();
    assert!(!ours.is_empty());
    let live: Vec<_> = ours.iter().filter(|(_, s)| s == "live").collect();
    assert!(live.is_empty(), "still live after the recheck: {live:?}");
}

#[test]
fn record_and_report_files_refuse_symlinks_and_are_private() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("record_and_report_files_refuse_symlinks_and_are_private") {
        return;
    }
    let dir =
        Scratch::new(std::env::temp_dir().join(format!("kmem-trace-links-{}", std::process::id())))
            .unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link_s = link.to_str().unwrap();
    // Refused before anything is loaded.
    let (code, err) = run(&[
        "watch",
        "--no-history",
        "--duration",
        "1s",
        "--record",
        link_s,
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        format!("kmem-trace: creating {link_s}: it is a symbolic link, which kmem-trace does not follow; name the real file")
    );
    let none = dir.path().join("none.db");
    let (code, err) = run(&[
        "report",
        "--no-bpf",
        "--db",
        none.to_str().unwrap(),
        "-o",
        link_s,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("it is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // A report written to a real path is the owner's only.
    let out = dir.path().join("report.md");
    let (_, err) = run(&[
        "report",
        "--no-bpf",
        "--db",
        none.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let mode = std::fs::metadata(&out).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "{err}");
}
