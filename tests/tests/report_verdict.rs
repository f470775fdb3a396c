//! `report` never gives a false all-clear: a history it cannot open or read
//! (a file that is no database; as a non-root user, a database in a 0700
//! directory) makes the verdict "unknown" with the reason and the fix at the
//! top, and the exit code non-zero. Runs on the doctor's fixture tree
//! (`--host-root`, `--no-bpf`), so it needs no root; the non-root case runs
//! as `nobody` through setpriv when the test runs as root.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Output};

use kmem_trace_tests::{kmem_trace_bin, kmem_trace_cmd, Scratch};
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kmem-trace/tests/fixtures/doctor/debian12-v2-healthy")
}

fn report_args(db: &std::path::Path, format: &str) -> Vec<String> {
    vec![
        "report".into(),
        "--no-bpf".into(),
        "--host-root".into(),
        fixture().display().to_string(),
        "--format".into(),
        format.into(),
        "--db".into(),
        db.display().to_string(),
    ]
}

fn assert_unknown(out: &Output, db: &std::path::Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let v = &r["verdict"];
    assert_eq!(v["severity"], "unknown", "{v:#}");
    let text = v["text"].as_str().unwrap();
    assert!(text.starts_with("Unknown: the history"), "{text}");
    assert!(!text.contains("No action needed"), "{text}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains(&db.display().to_string()),
        "{v:#}"
    );
    assert!(v["fix"].as_str().is_some_and(|f| !f.is_empty()), "{v:#}");
}

#[test]
fn a_history_that_is_no_database_is_an_unknown_verdict() {
    let scratch = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-report-verdict-{}", std::process::id())),
    )
    .unwrap();
    let db = scratch.path().join("history.db");
    std::fs::write(&db, b"this is not an SQLite database, just bytes\n").unwrap();
    let out = kmem_trace_cmd()
        .unwrap()
        .args(report_args(&db, "json"))
        .output()
        .unwrap();
    assert_unknown(&out, &db);
    // Markdown: the reason and the fix come right after the verdict, before any section.
    let out = kmem_trace_cmd()
        .unwrap()
        .args(report_args(&db, "md"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let md = String::from_utf8_lossy(&out.stdout);
    let why = md.find("**Why unknown:**").expect("reason at the top");
    assert!(why < md.find("## Now").unwrap(), "{md}");
}

#[test]
fn a_non_root_user_who_cannot_read_the_history_gets_unknown() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the report as nobody");
        return;
    }
    let scratch = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-report-nonroot-{}", std::process::id())),
    )
    .unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = scratch.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = private.join("history.db");
    std::fs::write(&db, b"").unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(kmem_trace_bin().unwrap())
        .args(report_args(&db, "json"))
        .output()
        .expect("setpriv (util-linux) runs the report as nobody");
    assert_unknown(&out, &db);
}
