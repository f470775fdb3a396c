//! Terminal escape injection, end to end: a cgroup whose name carries an OSC
//! title sequence, BEL and a bidi override, and a process that renames itself
//! (`/proc/self/comm`) to ESC and CR sequences, leave a zombie pinned by tmpfs
//! while `watch` pipes plain lines. `watch`'s lines, `zombies`, `census` and
//! `report --format md` must print them escaped (`\x1b`, `\u{202e}`), never raw.
//! Needs: root, a memory cgroup controller, BPF. Run it under
//! `flock /tmp/kmem-trace-kernel.lock` next to other root tests.

use std::{path::PathBuf, time::Duration};

use kmem_trace_tests::{
    kmem_trace_cmd, require_root, stdout_of, wait_for, zombie_ending, zombies_json, Scratch,
    TestParent, Tracer,
};

/// What a terminal would act on: C0 (but the line break), DEL, C1, bidi controls.
fn assert_inert(what: &str, text: &str) {
    let bad = text.chars().find(|c| {
        (c.is_control() && *c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    });
    assert!(bad.is_none(), "{what} printed {bad:?} raw:\n{text}");
}

#[test]
fn hostile_cgroup_and_process_names_are_escaped_everywhere() {
    if !require_root("hostile_cgroup_and_process_names_are_escaped_everywhere") {
        return;
    }
    let mut parent = TestParent::new("hostile").unwrap();
    let scratch = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-hostile-{}", std::process::id())),
    )
    .unwrap();
    let db = scratch.path().join("history.db");
    let db_arg = db.to_str().unwrap().to_string();
    // The name a delegated subtree could pick: only '/' and newlines are refused.
    let name = "evil\x1b]0;pwned\x07\u{202e}gnp";
    let mut tracer =
        Tracer::start(&["watch", "--plain", "--zombie-after", "1s", "--db", &db_arg]).unwrap();
    let cg = parent.child(name).unwrap();
    let pin = PathBuf::from(format!("/dev/shm/{}-pin", parent.name));
    parent.track_file(&pin);
    // The shell renames itself (printf is a builtin: /proc/self is the shell),
    // then forks the writer of the tmpfs pin.
    parent
        .run_in(
            &cg,
            &format!(
                "printf '\\033[2J\\rX\\342\\200\\256' > /proc/self/comm; head -c 1048576 /dev/zero > '{}'",
                pin.display()
            ),
        )
        .unwrap();
    parent.rmdir(&cg).unwrap();
    let seen = wait_for(Duration::from_secs(20), || {
        tracer
            .lines()
            .iter()
            .any(|l| l.contains("offline") && l.contains("evil\\x1b]0;pwned\\x07\\u{202e}gnp"))
    });
    let lines = tracer.lines().join("\n");
    assert!(seen, "no escaped offline line:\n{lines}");
    assert!(
        lines.contains("\\x1b[2J\\x0dX"),
        "the renamed shell, escaped:\n{lines}"
    );
    assert_inert("watch", &lines);
    // Aged past --zombie-after, then a clean stop.
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{:?}", tracer.stderr);
    let z = zombies_json(&db).unwrap();
    assert!(
        zombie_ending(&z, "gnp").is_some(),
        "the zombie is in the history: {z:#}"
    );

    let text = |args: &[&str]| {
        String::from_utf8(stdout_of(kmem_trace_cmd().unwrap().args(args)).unwrap()).unwrap()
    };
    let zombies = text(&["zombies", "--db", &db_arg]);
    assert_inert("zombies", &zombies);
    assert!(zombies.contains("evil\\x1b]0;pwned"), "{zombies}");
    let census = text(&["census"]);
    assert_inert("census", &census);
    assert!(census.contains("evil\\x1b]0;pwned"), "{census}");
    let report = text(&[
        "report",
        "--format",
        "md",
        "--zombie-after",
        "1s",
        "--db",
        &db_arg,
    ]);
    assert_inert("report", &report);
    assert!(report.contains("evil\\x1b]0;pwned"), "{report}");
}
