//! Layout resolution against hand-built BTF blobs (renamed, missing and anonymous
//! members) and, where present, this machine's own kernel BTF.

use super::*;

/// A minimal BTF encoder: enough kinds to model the structs kmem-trace reads.
#[derive(Default)]
pub(crate) struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

pub(crate) enum M<'a> {
    /// name, type id, byte offset
    F(&'a str, u32, u32),
}

impl BtfBuilder {
    pub fn new() -> Self {
        BtfBuilder {
            types: vec![],
            strings: vec![0],
            next_id: 1,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn push(&mut self, words: &[u32]) -> u32 {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }
    pub fn int(&mut self, name: &str, size: u32) -> u32 {
        let n = self.s(name);
        self.push(&[n, 1 << 24, size, size * 8])
    }
    pub fn ptr(&mut self, to: u32) -> u32 {
        self.push(&[0, 2 << 24, to])
    }
    pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        self.push(&[0, 3 << 24, 0, elem, index, n])
    }
    fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[M]) -> u32 {
        let n = self.s(name);
        let mut words = vec![n, (kind << 24) | members.len() as u32, size];
        for M::F(mname, ty, off) in members {
            let mn = self.s(mname);
            words.extend_from_slice(&[mn, *ty, off * 8]);
        }
        self.push(&words)
    }
    pub fn strukt(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.aggregate(4, name, size, members)
    }
    pub fn union(&mut self, name: &str, size: u32, members: &[M]) -> u32 {
        self.aggregate(5, name, size, members)
    }
    pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
        let n = self.s(name);
        let mut words = vec![n, (6 << 24) | values.len() as u32, 4];
        for (vn, v) in values {
            let vn = self.s(vn);
            words.extend_from_slice(&[vn, *v as u32]);
        }
        self.push(&words)
    }
    /// A forward declaration (`BTF_KIND_FWD`) of a struct.
    pub fn fwd(&mut self, name: &str) -> u32 {
        let n = self.s(name);
        self.push(&[n, 7 << 24, 0])
    }
    pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
        let n = self.s(name);
        self.push(&[n, 8 << 24, to])
    }
    pub fn func(&mut self, name: &str) -> u32 {
        self.func_with(name, 0, &[])
    }
    /// A function returning `ret` with parameters of the given types.
    pub fn func_with(&mut self, name: &str, ret: u32, params: &[u32]) -> u32 {
        let mut words = vec![0, (13 << 24) | params.len() as u32, ret];
        for p in params {
            words.extend_from_slice(&[0, *p]);
        }
        let proto = self.push(&words);
        let n = self.s(name);
        self.push(&[n, 12 << 24, proto])
    }
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xEB9Fu16.to_le_bytes());
        out.push(1);
        out.push(0);
        let hdr = [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ];
        for w in hdr {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// Options for [`kernel_like`]: which historical variant of each struct to build.
#[derive(Clone, Copy)]
pub(crate) struct Variant {
    pub kn_parent_name: &'static str,
    pub kn_id_union: bool,
    pub with_kn_name: bool,
    pub with_kmem: bool,
    /// `swap` and `memsw` as separate fields (before 5.10), not a union.
    pub swap_separate: bool,
    /// Decoys before the real `mem_cgroup` and `cgroup`, as in BTFHub files
    /// converted per compilation unit: forward declarations and partial copies.
    pub multi_cu: bool,
}

impl Default for Variant {
    fn default() -> Self {
        Variant {
            kn_parent_name: "__parent",
            kn_id_union: false,
            with_kn_name: true,
            with_kmem: true,
            swap_separate: false,
            multi_cu: false,
        }
    }
}

/// A BTF shaped like a 6.x kernel's (offsets chosen, not copied).
pub(crate) fn kernel_like(v: Variant) -> Vec<u8> {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let uint = b.int("unsigned int", 4);
    let u64t = b.int("long long unsigned int", 8);
    let long = b.int("long int", 8);
    let chr = b.int("char", 1);
    let voidp = b.ptr(0);
    let charp = b.ptr(chr);
    let atomic_long = b.strukt("", 8, &[M::F("counter", long, 0)]);
    let atomic_long_t = b.typedef("atomic_long_t", atomic_long);
    let id_ty = if v.kn_id_union {
        let inner = b.strukt("", 8, &[M::F("ino", uint, 0), M::F("generation", uint, 4)]);
        b.union(
            "kernfs_node_id",
            8,
            &[M::F("", inner, 0), M::F("id", u64t, 0)],
        )
    } else {
        u64t
    };
    let mut kn_members = vec![M::F("count", int, 0), M::F(v.kn_parent_name, voidp, 8)];
    if v.with_kn_name {
        kn_members.push(M::F("name", charp, 16));
    }
    kn_members.push(M::F("id", id_ty, 96));
    let kn = b.strukt("kernfs_node", 128, &kn_members);
    let knp = b.ptr(kn);
    b.enumeration(
        "cgroup_subsys_id",
        &[
            ("cpuset_cgrp_id", 0),
            ("memory_cgrp_id", 4),
            ("CGROUP_SUBSYS_COUNT", 12),
        ],
    );
    let ss = b.strukt("cgroup_subsys", 256, &[M::F("id", int, 200)]);
    let ssp = b.ptr(ss);
    let work = b.strukt(
        "work_struct",
        32,
        &[M::F("data", long, 0), M::F("func", voidp, 24)],
    );
    let rwork = b.strukt("rcu_work", 88, &[M::F("work", work, 0)]);
    let css = b.strukt(
        "cgroup_subsys_state",
        200,
        &[
            M::F("cgroup", voidp, 0),
            M::F("ss", ssp, 8),
            M::F("sibling", voidp, 40),
            M::F("children", voidp, 56),
            M::F("id", int, 72),
            M::F("flags", uint, 76),
            M::F("destroy_work", work, 96),
            M::F("destroy_rwork", rwork, 128),
            M::F("parent", voidp, 184),
        ],
    );
    let cssp = b.ptr(css);
    let subsys = b.array(cssp, int, 12);
    let root = b.strukt(
        "cgroup_root",
        64,
        &[M::F("subsys_mask", uint, 8), M::F("hierarchy_id", int, 12)],
    );
    let rootp = b.ptr(root);
    if v.multi_cu {
        b.fwd("cgroup");
        b.strukt("cgroup", 0, &[]);
        b.strukt("cgroup", 16, &[M::F("kn", knp, 8)]);
    }
    b.strukt(
        "cgroup",
        1024,
        &[
            M::F("self", css, 0),
            M::F("level", int, 208),
            M::F("kn", knp, 248),
            M::F("subsys", subsys, 400),
            M::F("root", rootp, 600),
        ],
    );
    let pc = b.strukt("page_counter", 192, &[M::F("usage", atomic_long_t, 0)]);
    let memcg_id = b.strukt(
        "mem_cgroup_id",
        8,
        &[M::F("id", int, 0), M::F("ref", int, 4)],
    );
    let mut mm = vec![
        M::F("css", css, 0),
        M::F("id", memcg_id, 200),
        M::F("memory", pc, 256),
    ];
    if v.swap_separate {
        // 4.8 to 5.9: `struct page_counter swap;` then, among the legacy
        // counters, `struct page_counter memsw;`.
        mm.push(M::F("swap", pc, 448));
        mm.push(M::F("memsw", pc, 640));
    } else {
        let swap_union = b.union("", 192, &[M::F("swap", pc, 0), M::F("memsw", pc, 0)]);
        mm.push(M::F("", swap_union, 448));
    }
    if v.multi_cu {
        b.fwd("mem_cgroup");
        b.strukt(
            "mem_cgroup",
            64,
            &[M::F("css", css, 0), M::F("memory", pc, 8)],
        );
    }
    if v.with_kmem {
        mm.push(M::F("kmem", pc, 2048));
    }
    mm.push(M::F("kmemcg_id", int, 1800));
    mm.push(M::F("objcg", voidp, 1808));
    b.strukt("mem_cgroup", 4096, &mm);
    let comm = b.array(chr, int, 16);
    b.strukt(
        "task_struct",
        9000,
        &[
            M::F("pid", int, 1000),
            M::F("tgid", int, 1004),
            M::F("real_parent", voidp, 1016),
            M::F("comm", comm, 2000),
        ],
    );
    b.func("mem_cgroup_css_offline");
    let tp = b.ptr(0);
    b.typedef("btf_trace_cgroup_mkdir", tp);
    b.build()
}

#[test]
fn resolves_a_modern_layout() {
    let btf = KernelBtf::from_bytes(&kernel_like(Variant::default())).unwrap();
    let (l, report) = btf.layout().unwrap();
    assert_eq!(l.memory_subsys_id, 4);
    assert_eq!(l.cgroup_kn, 248);
    assert_eq!(l.cgroup_subsys, 400);
    assert_eq!(l.kn_parent, 8);
    assert_eq!(l.kn_id, 96);
    assert_eq!(l.layout_flags & LAYOUT_KN_ID_U32, 0);
    assert_eq!(l.memcg_id, 200);
    assert_eq!(l.memcg_memory_usage, 256);
    // `swap` lives in an anonymous union: found through it.
    assert_eq!(l.memcg_swap_usage, 448);
    assert_eq!(l.memcg_kmem_usage, 2048);
    assert_eq!(l.css_destroy_rwork, 128);
    assert_eq!(l.work_func, 24);
    assert_eq!(l.task_comm, 2000);
    let parent = report.iter().find(|r| r.field == "kn_parent").unwrap();
    assert_eq!(parent.found, "kernfs_node.__parent");
    assert!(btf.has_func("mem_cgroup_css_offline"));
    assert!(!btf.has_func("memcg_online_kmem"));
    assert!(btf.has_tracepoint("cgroup_mkdir"));
    assert!(!btf.has_tracepoint("cgroup_rmdir"));
}

#[test]
fn falls_back_to_renamed_members() {
    let v = Variant {
        kn_parent_name: "parent",
        kn_id_union: true,
        with_kmem: false,
        ..Variant::default()
    };
    let btf = KernelBtf::from_bytes(&kernel_like(v)).unwrap();
    let (l, report) = btf.layout().unwrap();
    assert_eq!(l.kn_parent, 8);
    assert_eq!(
        report
            .iter()
            .find(|r| r.field == "kn_parent")
            .unwrap()
            .found,
        "kernfs_node.parent"
    );
    assert_eq!(l.layout_flags & LAYOUT_KN_ID_U32, LAYOUT_KN_ID_U32);
    assert_eq!(l.kn_id, 96);
    assert_eq!(l.memcg_kmem_usage, ABSENT);
}

#[test]
fn a_missing_required_member_is_named() {
    let v = Variant {
        with_kn_name: false,
        ..Variant::default()
    };
    let btf = KernelBtf::from_bytes(&kernel_like(v)).unwrap();
    let err = btf.layout().unwrap_err().to_string();
    assert_eq!(
        err,
        "kernel layout lacks struct kernfs_node member `name` (tried: name); kmem-trace does not support this kernel layout yet, or --btf points at the BTF of another kernel"
    );
}

#[test]
fn a_missing_btf_file_gives_the_btf_hint() {
    let err = KernelBtf::load(Some(Path::new("/nonexistent/vmlinux")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with("no kernel BTF at /nonexistent/vmlinux: "),
        "{err}"
    );
    assert!(
        err.ends_with("pass a matching BTF file with --btf FILE"),
        "{err}"
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(KernelBtf::from_bytes(b"not btf at all").is_err());
    assert!(KernelBtf::from_bytes(&[]).is_err());
}

/// Needs: /sys/kernel/btf/vmlinux (any kernel with CONFIG_DEBUG_INFO_BTF).
#[test]
fn resolves_the_running_kernel() {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if !path.exists() {
        eprintln!("skipped: {} is absent (kernel without BTF)", path.display());
        return;
    }
    let btf = KernelBtf::load(Some(path)).unwrap();
    let (l, _) = btf.layout().unwrap();
    assert!(l.memory_subsys_id < 16);
    assert_ne!(l.memcg_memory_usage, ABSENT);
    assert_ne!(l.kn_parent, ABSENT);
}

/// The BTF fixture the bad-input integration test passes with `--btf`: a kernel
/// layout without `kernfs_node.name`. `KMEM_TRACE_BLESS=1` rewrites it.
#[test]
fn missing_member_fixture_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btf/no-kn-name.btf");
    let want = kernel_like(Variant {
        with_kn_name: false,
        ..Variant::default()
    });
    if std::env::var_os("KMEM_TRACE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        want,
        "run with KMEM_TRACE_BLESS=1 to regenerate"
    );
}

#[test]
fn fexit_return_slot_is_the_parameter_count() {
    let mut b = BtfBuilder::new();
    let int = b.int("int", 4);
    let p = b.ptr(int);
    b.func_with("mem_cgroup_css_online", int, &[p]);
    b.func_with("two_args", int, &[p, int]);
    b.func("no_args");
    let btf = KernelBtf::from_bytes(&b.build()).unwrap();
    assert_eq!(btf.func_params("mem_cgroup_css_online"), Some(1));
    assert_eq!(btf.func_params("two_args"), Some(2));
    assert_eq!(btf.func_params("no_args"), Some(0));
    assert_eq!(btf.func_params("missing"), None);
}

#[test]
fn memcg_stat_slots_follow_the_kernel_table() {
    // 6.18 here: `long state_local[40]`, MEMCG_NR_STAT 58 (SWAP 51, SOCK 52, KMEM 55).
    assert_eq!(stat_index("NR_ANON_MAPPED", 17, 58, 40), Some(14));
    assert_eq!(stat_index("NR_FILE_PAGES", 19, 58, 40), Some(16));
    assert_eq!(stat_index("NR_SHMEM", 22, 58, 40), Some(19));
    assert_eq!(stat_index("MEMCG_SWAP", 51, 58, 40), Some(33));
    assert_eq!(stat_index("MEMCG_SOCK", 52, 58, 40), Some(34));
    assert_eq!(stat_index("MEMCG_KMEM", 55, 58, 40), Some(37));
    // Before 6.10 the array is indexed by the enum value.
    assert_eq!(stat_index("NR_SHMEM", 17, 46, 46), Some(17));
    assert_eq!(stat_index("MEMCG_KMEM", 43, 46, 46), Some(43));
    // Names outside the known prefix, and out-of-range values, are unknown.
    assert_eq!(stat_index("NR_WRITEBACK", 21, 58, 40), None);
    assert_eq!(stat_index("MEMCG_SWAP", 10, 58, 40), None);
}

#[test]
fn separate_swap_and_memsw_follow_the_hierarchy() {
    let v = Variant {
        swap_separate: true,
        ..Variant::default()
    };
    let btf = KernelBtf::from_bytes(&kernel_like(v)).unwrap();
    // v1 charges only memsw: reading `swap` there would always give 0.
    let (l, report) = btf.layout_for(Some(CgroupVersion::V1)).unwrap();
    assert_eq!(l.memcg_swap_usage, 640);
    let r = report
        .iter()
        .find(|r| r.field == "memcg_swap_usage")
        .unwrap();
    assert_eq!(
        r.found,
        "mem_cgroup.memsw.usage.counter (v1; separate from swap before 5.10)"
    );
    let (l, _) = btf.layout_for(Some(CgroupVersion::V2)).unwrap();
    assert_eq!(l.memcg_swap_usage, 448);
    // Unknown: v1, as the distributions of those kernels mount it.
    assert_eq!(btf.layout().unwrap().0.memcg_swap_usage, 640);
}

#[test]
fn a_swap_union_is_one_counter_for_both_hierarchies() {
    let btf = KernelBtf::from_bytes(&kernel_like(Variant::default())).unwrap();
    for h in [Some(CgroupVersion::V1), Some(CgroupVersion::V2), None] {
        let (l, report) = btf.layout_for(h).unwrap();
        assert_eq!(l.memcg_swap_usage, 448);
        let r = report
            .iter()
            .find(|r| r.field == "memcg_swap_usage")
            .unwrap();
        assert!(
            r.found.ends_with("(union of swap (v2) and memsw (v1))"),
            "{}",
            r.found
        );
    }
}

/// The v1 event path end to end: the offset read on a separate-field v1
/// kernel is memsw, and the decoder's v1 subtraction then gives swap.
#[test]
fn v1_swap_from_a_separate_memsw_counter_decodes_as_swap() {
    use crate::decode::TraceEvent;
    let v = Variant {
        swap_separate: true,
        ..Variant::default()
    };
    let btf = KernelBtf::from_bytes(&kernel_like(v)).unwrap();
    let (l, _) = btf.layout_for(Some(CgroupVersion::V1)).unwrap();
    // A fake memcg: memory usage 100 pages, swap (unused on v1) 0, memsw 130.
    let mut memcg = vec![0u8; 4096];
    memcg[l.memcg_memory_usage as usize..][..8].copy_from_slice(&100u64.to_le_bytes());
    memcg[448..456].copy_from_slice(&0u64.to_le_bytes());
    memcg[640..648].copy_from_slice(&130u64.to_le_bytes());
    let read = |off: u32| u64::from_le_bytes(memcg[off as usize..][..8].try_into().unwrap());
    let mut e = kmem_trace_common::Event::ZERO;
    e.kind = kmem_trace_common::EventKind::Offline as u32;
    e.memcg_addr = 0xffff_8880_1234_0000;
    e.hierarchy_id = 4;
    e.mem_pages = read(l.memcg_memory_usage);
    e.swap_pages = read(l.memcg_swap_usage);
    e.flags |= kmem_trace_common::flags::MEM_COUNTER | kmem_trace_common::flags::SWAP_COUNTER;
    let t = TraceEvent::decode(e.as_bytes()).unwrap();
    assert_eq!(t.counters().swap_pages, Some(30));
}

#[test]
fn multi_cu_btf_picks_the_complete_struct() {
    let v = Variant {
        multi_cu: true,
        ..Variant::default()
    };
    let btf = KernelBtf::from_bytes(&kernel_like(v)).unwrap();
    let (l, _) = btf.layout().unwrap();
    // The decoys say `memory` at 8 and `kn` at 8; the whole structs say 256 and 248.
    assert_eq!(l.memcg_memory_usage, 256);
    assert_eq!(l.cgroup_kn, 248);
    assert_eq!(l.memcg_swap_usage, 448);
    assert_eq!(l.cgroup_subsys, 400);
    assert_eq!(
        btf.layout().unwrap().0,
        KernelBtf::from_bytes(&kernel_like(Variant::default()))
            .unwrap()
            .layout()
            .unwrap()
            .0
    );
}

/// `--btf` with a BTFHub archive: the same layout as the raw file.
#[test]
fn loads_a_btfhub_archive() {
    let raw = kernel_like(Variant {
        swap_separate: true,
        ..Variant::default()
    });
    let release = super::super::kernel::release();
    let xz = super::super::btf_archive::tests::archive(&[(&format!("{release}.btf"), &raw)]);
    let dir = std::env::temp_dir().join(format!("kmem-trace-btf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{release}.btf.tar.xz"));
    std::fs::write(&path, &xz).unwrap();
    let from_archive = KernelBtf::load_mapped(Some(&path))
        .unwrap()
        .layout()
        .unwrap();
    let from_raw = KernelBtf::from_bytes(&raw).unwrap().layout().unwrap();
    assert_eq!(from_archive, from_raw);
    // A bad archive is an error that says what to do, not a panic.
    std::fs::write(&path, &xz[..xz.len() / 2]).unwrap();
    let e = KernelBtf::load_mapped(Some(&path))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is not a valid xz file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
