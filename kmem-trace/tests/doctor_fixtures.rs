//! `kmem-trace doctor --host-root` on the fixture trees, through the binary:
//! the exit codes node-problem-detector sees (0 OK, 1 problem, 2 unknown),
//! the `--npd` line and the JSON document. No root, no BPF.

use std::{path::PathBuf, process::Command};

fn doctor(tree: &str, extra: &[&str]) -> (Option<i32>, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/doctor")
        .join(tree);
    let out = Command::new(env!("CARGO_BIN_EXE_kmem-trace"))
        .arg("doctor")
        .arg("--host-root")
        .arg(&root)
        .args(extra)
        .output()
        .expect("running kmem-trace doctor");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn centos7_kmem_leak_tree_is_critical_with_exit_code_1() {
    let (code, text) = doctor("centos7-kmem-leak", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.starts_with("kmem-trace doctor: CRITICAL (exit 1)"),
        "{text}"
    );
    assert!(
        text.contains("[CRITICAL] kmem-leak: 3.10 kmem accounting leak"),
        "{text}"
    );
    assert!(text.contains("cgroup.memory=nokmem"), "{text}");

    let (code, line) = doctor("centos7-kmem-leak", &["--npd"]);
    assert_eq!(code, Some(1));
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("KmemLeak: "), "{line}");

    let (code, json) = doctor("centos7-kmem-leak", &["--json"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&json).expect("doctor --json is JSON");
    assert_eq!(v["status"], "critical");
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["findings"][0]["id"], "kmem-leak");
    assert_eq!(v["findings"][0]["severity"], "critical");
    assert_eq!(v["facts"]["kubelet"]["driver"], "cgroupfs");
}

#[test]
fn healthy_modern_tree_exits_0() {
    let (code, text) = doctor("debian12-v2-healthy", &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, line) = doctor("debian12-v2-healthy", &["--npd"]);
    assert_eq!(code, Some(0));
    assert!(line.starts_with("OK: "), "{line}");
}

#[test]
fn an_empty_tree_is_unknown_with_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("kmem-trace-doctor-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kmem-trace"))
        .args(["doctor", "--npd", "--host-root"])
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Unknown"));
}
