//! The VM matrix runner itself is tested: a probe forced onto a symbol that does
//! not exist must turn its cell red — that point failed, not "not visible" — and
//! make `cargo xtask vm-test` exit non-zero. Boots one VM (about 20 s under
//! TCG), so it runs only with `KMEM_TRACE_VM_TESTS=1`, which the `vm` step of
//! `cargo xtask test` sets.

use std::{path::PathBuf, process::Command};

use serde_json::Value;

#[test]
fn a_broken_probe_turns_its_cell_red_and_the_run_fails() {
    if std::env::var_os("KMEM_TRACE_VM_TESTS").is_none() {
        eprintln!("skipped: boots a VM; set KMEM_TRACE_VM_TESTS=1 (cargo xtask test does)");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let out = root.join("target/vm-test-broken");
    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&root)
        .args(["vm-test", "--kernel", "6.1-cloud", "--boot", "default"])
        .args(["--family", "kprobe", "--no-host"])
        .args(["--force-symbol", "kprobe:offline=no_such_function"])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running xtask vm-test");
    assert!(
        !status.success(),
        "vm-test passed with a probe forced onto a missing symbol"
    );
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(results["ok"], false);
    let run = &results["runs"][0];
    assert_eq!(run["ok"], false);
    assert!(run["failure"].is_null(), "the VM itself ran fine: {run:#}");
    let cell = run["cells"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["family"] == "kprobe"))
        .expect("a kprobe cell");
    assert_eq!(cell["status"], "fail");
    let offline = &cell["points"]["offline"];
    assert_eq!(offline["status"], "fail", "{offline}");
    assert_eq!(
        offline["detail"],
        "probes attach a hook for it but watch did not"
    );
    // The other points still work, and the zombie verdict is wrong without offline.
    assert_eq!(cell["points"]["free"]["status"], "pass", "{cell:#}");
    let zombies = cell["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "zombie verdict"))
        .expect("a zombie verdict check");
    assert_eq!(zombies["ok"], false, "{zombies}");
    let matrix = std::fs::read_to_string(out.join("matrix.txt")).expect("matrix.txt");
    assert!(matrix.contains("FAIL"), "{matrix}");
}
