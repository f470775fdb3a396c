//! Root integration test of the census on the real kernel: its dying count
//! must equal memory `num_cgroups` of `/proc/cgroups` minus the visible memory
//! cgroup directories (cgroup v1; on v2 `nr_dying_subsys_memory`), before and
//! after making dying memcgs pinned by tmpfs files under a test parent, and
//! those zombies must be listed with their paths and a tmpfs pin.
//! Holds the kernel lock: other helpers' root tests must not change the
//! cgroup tree meanwhile. Needs root, BTF and the cgroup BPF iterator (6.1+).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use kmem_trace_tests::{
    census_json, lock::KernelLock, memory_root, require_root, wait_for, TestParent,
};
use serde_json::Value;

/// The kernel's counts, read here independently of kmem-trace: (memcgs,
/// visible directories) on v1, (live, dying) memory csses on v2.
fn kernel_counts(root: &Path) -> (u64, u64) {
    let v2 = root.join("cgroup.controllers").exists();
    if v2 {
        let stat = fs::read_to_string(root.join("cgroup.stat")).unwrap();
        let get = |k: &str| {
            stat.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        let dying = get("nr_dying_subsys_memory ")
            .or_else(|| get("nr_dying_descendants "))
            .expect("cgroup.stat has a dying count");
        return (dirs(root) + dying, dirs(root));
    }
    let num = fs::read_to_string("/proc/cgroups")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"memory")).then(|| f[2].parse::<u64>().unwrap())
        })
        .unwrap();
    (num, dirs(root))
}

fn dirs(dir: &Path) -> u64 {
    1 + fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| dirs(&e.path()))
                .sum::<u64>()
        })
        .unwrap_or(0)
}

/// A census taken while the kernel's dying count stayed the same around it;
/// returns (census, kernel dying count). The machine's own tooling creates
/// cgroups now and then, so a census that raced one is taken again.
fn quiet_census(root: &Path) -> (Value, u64) {
    for _ in 0..20 {
        let before = kernel_counts(root);
        let c = census_json();
        let after = kernel_counts(root);
        if before == after {
            return (c, after.0 - after.1);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the cgroup tree never stayed still for one census");
}

/// The census's dying count equals the kernel's.
fn assert_matches_kernel(c: &Value, kernel: u64) {
    assert_eq!(
        c["totals"]["dying"].as_u64().unwrap(),
        kernel,
        "census vs kernel: {}",
        c["checks"]
    );
}

#[test]
fn census_dying_count_equals_the_kernels_also_with_tmpfs_pinned_zombies() {
    if !require_root("census_dying_count_equals_the_kernels_also_with_tmpfs_pinned_zombies") {
        return;
    }
    let t = std::time::Instant::now();
    let _lock = KernelLock::take();
    eprintln!("kernel lock after {:?}", t.elapsed());
    let root = memory_root().unwrap();

    // 1. The machine as it is.
    let (c, kernel) = quiet_census(&root);
    assert_matches_kernel(&c, kernel);
    assert_eq!(c["consistent"], true, "{}", c["checks"]);

    // 2. Dying memcgs of our own: 6 children write 1 MiB each to tmpfs; 3 keep
    // their file (pinned), 3 delete it (freed soon after rmdir).
    let mut parent = TestParent::new("census").unwrap();
    let shm = PathBuf::from(format!("/dev/shm/{}", parent.name));
    fs::create_dir_all(&shm).unwrap();
    let mut children = Vec::new();
    for i in 0..6 {
        let cg = parent.child(&format!("c{i}")).unwrap();
        let f = shm.join(format!("f{i}"));
        parent.track_file(&f);
        parent
            .run_in(
                &cg,
                &format!("head -c 1048576 /dev/zero > '{}'", f.display()),
            )
            .unwrap();
        children.push(cg);
    }
    for i in 3..6 {
        fs::remove_file(shm.join(format!("f{i}"))).unwrap();
    }
    for cg in &children {
        parent.rmdir(cg).unwrap();
    }
    let prefix = format!("/{}/", parent.name);
    let ours = |c: &Value| -> Vec<Value> {
        c["memcgs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "dying" && m["path"].as_str().unwrap().starts_with(&prefix))
            .cloned()
            .collect()
    };
    eprintln!("zombies made at {:?}", t.elapsed());
    // The unpinned ones are freed asynchronously; wait until only the pinned remain.
    let settled = wait_for(Duration::from_secs(30), || ours(&census_json()).len() == 3);
    let (c, kernel) = quiet_census(&root);
    let mine = ours(&c);
    assert!(settled, "our dying memcgs: {mine:#?}");
    assert_matches_kernel(&c, kernel);
    assert_eq!(c["consistent"], true, "{}", c["checks"]);
    let mut paths: Vec<String> = mine
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    let want: Vec<String> = (0..3).map(|i| format!("{prefix}c{i}")).collect();
    assert_eq!(paths, want);
    for m in &mine {
        // 1 MiB of tmpfs pages still charged, and the parent's stats say shmem.
        assert!(m["mem_bytes"].as_u64().unwrap() >= 1 << 20, "{m}");
        assert_eq!(m["pin"], "tmpfs", "{m}");
        assert_eq!(m["level"], 2, "{m}");
        assert!(m["addr"].as_str().unwrap().starts_with("0xffff"), "{m}");
    }

    eprintln!("pinned zombies checked at {:?}", t.elapsed());
    // 3. Deleting the files frees them, and the counts agree again.
    for i in 0..3 {
        fs::remove_file(shm.join(format!("f{i}"))).unwrap();
    }
    assert!(
        wait_for(Duration::from_secs(30), || ours(&census_json()).is_empty()),
        "zombies stayed after their tmpfs files were deleted"
    );
    let (c, kernel) = quiet_census(&root);
    assert_matches_kernel(&c, kernel);
    drop(parent);
    let _ = fs::remove_dir(&shm);
    eprintln!("done at {:?}", t.elapsed());
}
