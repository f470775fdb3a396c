//! Root test of exact pin causes: memcgs of known content (two writing 4 MiB
//! to tmpfs, one writing 2 MiB to a regular file on disk) are removed, and the
//! census must name each one's own cause from its own counters: the
//! page-cache-only zombie beside its tmpfs-pinned siblings is page cache (an
//! ancestor's split would call all three tmpfs). A live memcg's own counters
//! must match its `memory.stat`. Needs root, BTF, the cgroup BPF iterator
//! (6.1+) and a kernel whose `memcg_vmstats` layout the census can read.

use std::{fs, path::PathBuf, time::Duration};

use kmem_trace_tests::{census_json, lock::KernelLock, require_root, wait_for, TestParent};
use serde_json::Value;

const PAGE: u64 = 4096;
/// rstat flushes lag by at most `MEMCG_CHARGE_BATCH` (64) pages per CPU.
fn slack() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(64, |n| n.get() as u64);
    64 * cpus.max(1) * PAGE
}

fn memcg<'a>(c: &'a Value, path: &str) -> Option<&'a Value> {
    c["memcgs"].as_array()?.iter().find(|m| m["path"] == path)
}

/// Own counter `k` of a census entry, in bytes.
fn own(m: &Value, k: &str) -> u64 {
    m["own_pages"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("no own {k}: {m}"))
        * PAGE
}

fn stat(text: &str, k: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn near(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= slack()
}

#[test]
fn each_zombie_gets_its_own_pin_cause() {
    if !require_root("each_zombie_gets_its_own_pin_cause") {
        return;
    }
    let _lock = KernelLock::take();
    let mut parent = TestParent::new("pins").unwrap();
    let prefix = format!("/{}", parent.name);
    if memcg(&census_json(), &prefix).is_some_and(|m| m["own_pages"].is_null()) {
        eprintln!("skipped: this kernel's memcg_vmstats layout gives no own counters (approximate causes only)");
        return;
    }
    let shm = PathBuf::from(format!("/dev/shm/{}", parent.name));
    fs::create_dir_all(&shm).unwrap();
    let disk = PathBuf::from(format!("/var/tmp/{}", parent.name));
    parent.track_file(&disk);
    let mut kids = Vec::new();
    for (name, file, mib) in [
        ("tmpfs-a", shm.join("a"), 4),
        ("tmpfs-b", shm.join("b"), 4),
        ("cache", disk.clone(), 2),
    ] {
        let cg = parent.child(name).unwrap();
        parent.track_file(&file);
        let script = format!("head -c {} /dev/zero > '{}'", mib << 20, file.display());
        parent.run_in(&cg, &script).unwrap();
        kids.push((cg, name, mib << 20));
    }
    // Live: the census's own counters against the kernel's memory.stat.
    let mut ok = false;
    let mut last = String::new();
    for _ in 0..10 {
        let c = census_json();
        ok = kids.iter().all(|(cg, name, _)| {
            let text = fs::read_to_string(cg.join("memory.stat")).unwrap_or_default();
            let m = memcg(&c, &format!("{prefix}/{name}")).unwrap();
            // v1: `cache`/`shmem`/`rss`; v2: `file`/`shmem`/`anon`.
            let file = stat(&text, "cache").max(stat(&text, "file"));
            let anon = stat(&text, "rss").max(stat(&text, "anon"));
            last = format!("{name}: {text} vs {m}");
            near(own(m, "file"), file)
                && near(own(m, "shmem"), stat(&text, "shmem"))
                && near(own(m, "anon"), anon)
        });
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(ok, "own counters differ from memory.stat: {last}");
    for (cg, _, _) in &kids {
        parent.rmdir(cg).unwrap();
    }
    let c = census_json();
    for (_, name, bytes) in &kids {
        let m = memcg(&c, &format!("{prefix}/{name}")).unwrap_or_else(|| panic!("{name} gone"));
        assert_eq!(m["state"], "dying", "{m}");
        assert_eq!(m["pin_exact"], true, "{m}");
        let (cause, shmem) = if name.starts_with("tmpfs") {
            ("tmpfs", *bytes)
        } else {
            ("page_cache", 0)
        };
        assert_eq!(m["pin"], cause, "{m}");
        assert!(own(m, "file") + slack() >= *bytes, "{m}");
        assert!(near(own(m, "shmem"), shmem), "{m}");
    }
    // Deleting the files frees the tmpfs-pinned ones. The page-cache one may
    // stay: writing a new file also charges the filesystem's metadata blocks
    // (block device page cache) to the writer, and those outlive the file;
    // if it stays, it is still page cache.
    for f in [shm.join("a"), shm.join("b"), disk] {
        let _ = fs::remove_file(f);
    }
    let mut last = Value::Null;
    let settled = wait_for(Duration::from_secs(30), || {
        last = census_json();
        kids.iter().all(
            |(_, name, _)| match memcg(&last, &format!("{prefix}/{name}")) {
                None => true,
                Some(m) => *name == "cache" && m["pin"] == "page_cache",
            },
        )
    });
    drop(parent);
    let _ = fs::remove_dir(&shm);
    assert!(
        settled,
        "zombies stayed after their files were deleted: {last}"
    );
}
