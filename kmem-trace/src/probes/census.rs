//! The census iterator, kernel side of userspace: loads the `iter/cgroup`
//! program `kt_census`, attaches it `SELF_ONLY` to a memory hierarchy's root
//! and reads back the records and the summary. Pure interpretation of the
//! records lives in `crate::census`.
//!
//! aya 0.14's `Iter::attach()` passes no `bpf_iter_link_info`, and the kernel
//! then iterates from the cgroup v2 root (`bpf_iter_attach_cgroup()` in
//! `kernel/bpf/cgroup_iter.c`), which on a cgroup v1 machine has no memory
//! controller. So the link is made here with a raw `BPF_LINK_CREATE` carrying
//! `bpf_iter_link_info.cgroup = { SELF_ONLY, cgroup_fd }`, then
//! `BPF_ITER_CREATE` and `read()`.

use std::{
    fs::File,
    io::Read,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::Iter,
    EbpfLoader,
};
use kmem_trace_common::{
    census_flags, CensusSummary, Event, CENSUS_MAGIC, CENSUS_SUMMARY_SIZE, EVENT_SIZE,
};

use super::{btf::KernelBtf, kernel, objects::OBJECT};

/// Errors of running the census iterator. Every one means "fall back to counts".
#[derive(Debug, thiserror::Error)]
pub enum CensusProbeError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Btf(#[from] super::btf::BtfError),
    #[error("this kmem-trace binary was built without its eBPF programs; run `cargo xtask setup`, then rebuild")]
    NoObject,
    #[error("the kernel has no cgroup BPF iterator (`bpf_iter_cgroup` is not in its BTF; it arrived in 6.1)")]
    NoCgroupIter,
    #[error("loading the census iterator failed: {0}")]
    Load(String),
    #[error("{call} failed: {source}{hint}")]
    Syscall {
        call: &'static str,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("opening the memory hierarchy root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the census iterator returned {0} bytes instead of its summary; the eBPF object does not match this binary, rebuild both")]
    Summary(usize),
    #[error("the census iterator found no memory controller at {0}; pass the memory hierarchy's mount point")]
    NotMemory(PathBuf),
    #[error("the kernel layout lacks css children/sibling/flags members, so the memcg tree cannot be walked on this kernel")]
    NoLayout,
}

/// How to run the iterator.
#[derive(Clone, Debug)]
pub struct CensusProbeConfig {
    /// Mount point of the memory hierarchy (v1 `memory` or the cgroup2 root).
    pub root: PathBuf,
    pub btf: Option<PathBuf>,
    /// How many memcgs to expect (memory `num_cgroups` of `/proc/cgroups`),
    /// to size the record ring buffer; it is doubled and retried when short.
    pub expected: u64,
}

/// Time spent per phase.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CensusTiming {
    /// BTF parsing and layout resolution (both parsers, run in parallel).
    pub btf_us: u64,
    /// Of which btf-rs (layout) and aya (loader), each on its own thread.
    pub layout_btf_us: u64,
    pub aya_btf_us: u64,
    /// Object and program load (maps, verifier).
    pub load_us: u64,
    /// Of which the census program's load (the verifier).
    pub verify_us: u64,
    /// Link and iterator creation.
    pub attach_us: u64,
    /// The `read()` of the iterator, which runs the whole walk in the kernel.
    pub read_us: u64,
    /// The walk itself, as the program measured it (`bpf_ktime_get_ns`).
    pub walk_us: u64,
    /// Copying the records out of the ring buffer.
    pub drain_us: u64,
    /// Every attempt, end to end.
    pub total_us: u64,
    /// CPU time the process spent meanwhile (all threads): the work, which a
    /// busy machine does not inflate the way it inflates `total_us`.
    pub cpu_us: u64,
    /// Attempts made (a retry follows a ring buffer that was too small).
    pub attempts: u32,
}

/// What the iterator returned: raw records in walk order (parents before
/// children) and the in-kernel summary.
pub struct RawCensus {
    pub records: Vec<Event>,
    pub summary: CensusSummary,
    pub ring_bytes: u32,
    pub timing: CensusTiming,
}

/// Bytes one record takes in a BPF ring buffer (8-byte header, 8-aligned).
const RING_RECORD: u64 = EVENT_SIZE as u64 + 8;
/// Largest ring buffer tried (fits ~980,000 records).
const MAX_RING: u64 = 256 << 20;

/// Ring buffer bytes for `n` expected memcgs: room for a quarter more plus
/// some slack, a power of two of at least 64 KiB.
pub fn ring_bytes_for(n: u64) -> u32 {
    let want = (n + n / 4 + 256) * RING_RECORD;
    want.next_power_of_two().clamp(64 << 10, MAX_RING) as u32
}

/// Runs the census. Retries with a bigger ring buffer while records were lost.
pub fn run(cfg: &CensusProbeConfig) -> Result<RawCensus, CensusProbeError> {
    let start = Instant::now();
    let cpu_start = process_cpu_us();
    kernel::check_own_privileges()?;
    if OBJECT.is_empty() {
        return Err(CensusProbeError::NoObject);
    }
    let root = File::open(&cfg.root).map_err(|source| CensusProbeError::Root {
        path: cfg.root.clone(),
        source,
    })?;
    let mut ring = ring_bytes_for(cfg.expected);
    // `EbpfLoader::new()` parses the kernel BTF (aya 0.14 does so eagerly,
    // whatever `.btf()` says later): on its own thread, while this one
    // resolves the layout and the iterator's BTF id from the mapped BTF.
    let (found, first, layout_btf_us, new_us) = std::thread::scope(|s| {
        let loader_side = s.spawn(|| {
            let t = Instant::now();
            (EbpfLoader::new(), t.elapsed().as_micros() as u64)
        });
        let t = Instant::now();
        let found = resolve(cfg.btf.as_deref());
        let layout_us = t.elapsed().as_micros() as u64;
        let (first, new_us) = match (loader_side.join(), &found) {
            (Ok((loader, new_us)), Ok((l, _))) => (Some(load_object(loader, l, ring)), new_us),
            (Err(_), Ok(_)) => (
                Some(Err(CensusProbeError::Load(
                    "the BTF parser thread panicked".into(),
                ))),
                0,
            ),
            (_, Err(_)) => (None, 0),
        };
        (found, first, layout_us, new_us)
    });
    let (layout, iter_id) = found?;
    let aya_t = Instant::now();
    let mut aya_btf = match btf_with_func_at(ITER_FUNC, iter_id) {
        Some(b) => IterBtf::StandIn(b),
        None => IterBtf::Parsed(parse_aya_btf(cfg.btf.as_deref())?),
    };
    let aya_btf_us = aya_t.elapsed().as_micros() as u64;
    let btf_us = layout_btf_us.max(new_us) + aya_btf_us;
    let mut loaded = first.unwrap_or_else(|| load_object(EbpfLoader::new(), &layout, ring));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (bpf, load_us) = loaded?;
        let mut raw = match walk(bpf, load_us, aya_btf.get(), &root, ring) {
            // The stand-in BTF is a shortcut; on any load failure, the real thing.
            Err(CensusProbeError::Load(why)) if matches!(aya_btf, IterBtf::StandIn(_)) => {
                log::info!("census: retrying with the full kernel BTF ({why})");
                aya_btf = IterBtf::Parsed(parse_aya_btf(cfg.btf.as_deref())?);
                loaded = load_object(EbpfLoader::new(), &layout, ring);
                continue;
            }
            r => r?,
        };
        if raw.summary.flags & census_flags::NO_MEMORY != 0 {
            return Err(CensusProbeError::NotMemory(cfg.root.clone()));
        }
        if raw.summary.flags & census_flags::NO_LAYOUT != 0 {
            return Err(CensusProbeError::NoLayout);
        }
        let needed = ring_bytes_for(raw.summary.visited);
        if raw.summary.dropped > 0 && needed > ring && attempts < 4 {
            log::info!(
                "census: {} of {} records did not fit a {ring}-byte ring buffer; retrying with {needed}",
                raw.summary.dropped,
                raw.summary.visited
            );
            ring = needed;
            loaded = load_object(EbpfLoader::new(), &layout, ring);
            continue;
        }
        raw.timing.btf_us = btf_us;
        raw.timing.layout_btf_us = layout_btf_us;
        raw.timing.aya_btf_us = aya_btf_us;
        raw.timing.attempts = attempts;
        raw.timing.total_us = start.elapsed().as_micros() as u64;
        raw.timing.cpu_us = process_cpu_us().saturating_sub(cpu_start);
        return Ok(raw);
    }
}

/// The iterator's kernel function: `bpf_iter_<type>` (DEFINE_BPF_ITER_FUNC).
pub(super) const ITER_FUNC: &str = "bpf_iter_cgroup";

/// Layout and the iterator's BTF id, from the mapped kernel BTF.
fn resolve(btf: Option<&Path>) -> Result<(kmem_trace_common::Layout, u32), CensusProbeError> {
    let kbtf = KernelBtf::load_mapped(btf)?;
    let layout = kbtf.layout()?.0;
    if [layout.css_children, layout.css_sibling, layout.css_flags]
        .contains(&kmem_trace_common::ABSENT)
    {
        return Err(CensusProbeError::NoLayout);
    }
    // The iterator attaches by BTF id, which only the kernel's own BTF numbers
    // right; a --btf file serves the layout.
    let own = btf.and_then(|_| KernelBtf::load_mapped(None).ok());
    let id = own
        .as_ref()
        .unwrap_or(&kbtf)
        .func_id(ITER_FUNC)
        .ok_or(CensusProbeError::NoCgroupIter)?;
    Ok((layout, id))
}

fn parse_aya_btf(btf: Option<&Path>) -> Result<aya::Btf, CensusProbeError> {
    match btf {
        // Ids from the kernel's own BTF where it has one (see `resolve`); else
        // through the archive reader: `--btf` may be a BTFHub .btf.tar.xz.
        Some(p) if !Path::new("/sys/kernel/btf/vmlinux").exists() => {
            let bytes = super::btf_archive::read(p, &super::kernel::release())
                .map_err(|e| CensusProbeError::Load(e.to_string()))?;
            aya::Btf::parse(&bytes, aya::Endianness::default())
        }
        _ => aya::Btf::from_sys_fs(),
    }
    .map_err(|e| CensusProbeError::Load(format!("reading BTF: {e}")))
}

/// What `Iter::load` gets to find the iterator's BTF id.
enum IterBtf {
    StandIn(aya::Btf),
    Parsed(aya::Btf),
}

impl IterBtf {
    fn get(&self) -> &aya::Btf {
        match self {
            IterBtf::StandIn(b) | IterBtf::Parsed(b) => b,
        }
    }
}

/// A BTF blob where `name` is a function with type id `id`, ids before it
/// being placeholder `void *` types. aya 0.14's `Iter::load` takes a whole
/// `aya::Btf` only to look up that one id (`id_by_type_name_kind`), and a
/// second parse of vmlinux BTF for it costs ~20 ms of CPU, a third of the
/// census; the id comes from the mapped BTF instead. `None` for absurd ids.
fn btf_with_func_at(name: &str, id: u32) -> Option<aya::Btf> {
    const BTF_KIND_PTR: u32 = 2;
    const BTF_KIND_FUNC: u32 = 12;
    const BTF_FUNC_GLOBAL: u32 = 1;
    if id == 0 || id > 4_000_000 {
        return None;
    }
    let mut types = Vec::with_capacity(id as usize * 12);
    let mut push = |name_off: u32, info: u32, ty: u32| {
        for v in [name_off, info, ty] {
            types.extend_from_slice(&v.to_le_bytes());
        }
    };
    for _ in 1..id {
        push(0, BTF_KIND_PTR << 24, 0);
    }
    push(1, BTF_KIND_FUNC << 24 | BTF_FUNC_GLOBAL, 0);
    let mut strings = vec![0u8];
    strings.extend_from_slice(name.as_bytes());
    strings.push(0);
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
    blob.extend_from_slice(&[1, 0]);
    for v in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&v.to_le_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    aya::Btf::parse(&blob, aya::Endianness::Little).ok()
}

/// CPU time of this process so far (`CLOCK_PROCESS_CPUTIME_ID`), in µs.
fn process_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Loads the object (maps, relocations; programs stay unloaded) with a record
/// ring buffer of `ring` bytes. No kernel BTF is needed for it: the Rust
/// programs carry no CO-RE relocations (offsets come through `LAYOUT`).
fn load_object<'a>(
    mut loader: EbpfLoader<'a>,
    layout: &'a kmem_trace_common::Layout,
    ring: u32,
) -> Result<(aya::Ebpf, u64), CensusProbeError> {
    let t = Instant::now();
    // The tracer's own maps are created too (one object); keep them minimal.
    let bpf = loader
        .btf(None)
        .override_global("LAYOUT", layout, true)
        .map_max_entries("EVENTS", 4096)
        .map_max_entries("CENSUS", ring)
        .load(OBJECT)
        .map_err(|e| CensusProbeError::Load(super::error_chain(&e)))?;
    Ok((bpf, t.elapsed().as_micros() as u64))
}

/// Loads the census program, attaches it, runs the walk (`read()`) and
/// drains the records.
fn walk(
    mut bpf: aya::Ebpf,
    object_us: u64,
    btf: &aya::Btf,
    root: &File,
    ring: u32,
) -> Result<RawCensus, CensusProbeError> {
    let mut timing = CensusTiming::default();
    let prog: &mut Iter = bpf
        .program_mut("kt_census")
        .ok_or_else(|| {
            CensusProbeError::Load("program kt_census is not in the eBPF object".into())
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| CensusProbeError::Load(e.to_string()))?;
    let tv = Instant::now();
    if let Err(e) = prog.load("cgroup", btf) {
        if matches!(e, aya::programs::ProgramError::Btf(_)) {
            return Err(CensusProbeError::NoCgroupIter);
        }
        return Err(CensusProbeError::Load(super::describe(&e)));
    }
    let prog_fd = prog
        .fd()
        .map_err(|e| CensusProbeError::Load(e.to_string()))?
        .as_fd()
        .as_raw_fd();
    timing.verify_us = tv.elapsed().as_micros() as u64;
    timing.load_us = object_us + timing.verify_us;

    let t = Instant::now();
    let link = link_create_cgroup_iter(prog_fd, root.as_raw_fd())?;
    let iter = iter_create(&link)?;
    timing.attach_us = t.elapsed().as_micros() as u64;

    let t = Instant::now();
    let mut out = Vec::with_capacity(CENSUS_SUMMARY_SIZE);
    File::from(iter)
        .read_to_end(&mut out)
        .map_err(|source| CensusProbeError::Syscall {
            call: "read() of the census iterator",
            source,
            hint: "",
        })?;
    timing.read_us = t.elapsed().as_micros() as u64;
    let summary = parse_summary(&out)?;
    timing.walk_us = summary.end_ns.saturating_sub(summary.start_ns) / 1000;

    let t = Instant::now();
    let map = bpf
        .take_map("CENSUS")
        .ok_or_else(|| CensusProbeError::Load("map CENSUS is not in the eBPF object".into()))?;
    let mut rb: RingBuf<MapData> =
        RingBuf::try_from(map).map_err(|e| CensusProbeError::Load(e.to_string()))?;
    let mut records = Vec::with_capacity(summary.emitted as usize);
    while let Some(item) = rb.next() {
        if item.len() == EVENT_SIZE {
            // SAFETY: length checked; Event is plain data valid for any bits.
            records.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
        }
    }
    timing.drain_us = t.elapsed().as_micros() as u64;
    Ok(RawCensus {
        records,
        summary,
        ring_bytes: ring,
        timing,
    })
}

/// The summary is the only thing the program writes to its seq file.
pub fn parse_summary(bytes: &[u8]) -> Result<CensusSummary, CensusProbeError> {
    if bytes.len() != CENSUS_SUMMARY_SIZE {
        return Err(CensusProbeError::Summary(bytes.len()));
    }
    // SAFETY: length checked; CensusSummary is plain data valid for any bits.
    let s: CensusSummary = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const _) };
    if s.magic != CENSUS_MAGIC {
        return Err(CensusProbeError::Summary(bytes.len()));
    }
    Ok(s)
}

// Numbers from include/uapi/linux/bpf.h (stable ABI).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;
const BPF_CGROUP_ITER_SELF_ONLY: u32 = 1;

/// `union bpf_iter_link_info`, the `cgroup` member.
#[repr(C)]
struct IterLinkInfoCgroup {
    order: u32,
    cgroup_fd: u32,
    cgroup_id: u64,
}

/// The `link_create` member of `union bpf_attr`, padded with zeros (the kernel
/// requires every byte it does not know to be zero).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: [u32; 25],
}

#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
    _pad: [u64; 6],
}

fn bpf_syscall<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a properly sized, zero-padded bpf_attr for `cmd`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

fn link_create_cgroup_iter(prog_fd: i32, cgroup_fd: i32) -> Result<OwnedFd, CensusProbeError> {
    let info = IterLinkInfoCgroup {
        order: BPF_CGROUP_ITER_SELF_ONLY,
        cgroup_fd: cgroup_fd as u32,
        cgroup_id: 0,
    };
    let mut attr = LinkCreateAttr {
        prog_fd: prog_fd as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: &info as *const IterLinkInfoCgroup as u64,
        iter_info_len: std::mem::size_of::<IterLinkInfoCgroup>() as u32,
        _pad: [0; 25],
    };
    let fd = bpf_syscall(BPF_LINK_CREATE, &mut attr).map_err(|source| {
        let hint = if source.raw_os_error() == Some(libc::EBADF) {
            " (the cgroup fd is not a cgroup directory)"
        } else {
            ""
        };
        CensusProbeError::Syscall {
            call: "BPF_LINK_CREATE (cgroup iterator)",
            source,
            hint,
        }
    })?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn iter_create(link: &OwnedFd) -> Result<OwnedFd, CensusProbeError> {
    let mut attr = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
        _pad: [0; 6],
    };
    let fd =
        bpf_syscall(BPF_ITER_CREATE, &mut attr).map_err(|source| CensusProbeError::Syscall {
            call: "BPF_ITER_CREATE",
            source,
            hint: "",
        })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether this kernel can run the census iterator, from its BTF alone (no
/// loading): the cgroup iterator (6.1+) and `bpf_loop` (5.17+, always there
/// when the cgroup iterator is).
pub fn iterator_available(btf: Option<&Path>) -> Result<(), String> {
    let kbtf = KernelBtf::load_mapped(btf).map_err(|e| e.to_string())?;
    if !kbtf.has_func(ITER_FUNC) {
        return Err(CensusProbeError::NoCgroupIter.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_fit_the_expected_count() {
        assert_eq!(ring_bytes_for(0), 128 << 10);
        let r = ring_bytes_for(10_000) as u64;
        assert!(r.is_power_of_two());
        assert!(r >= 12_500 * RING_RECORD, "{r}");
        assert_eq!(ring_bytes_for(u64::MAX / 1024) as u64, MAX_RING);
    }

    #[test]
    fn summaries_are_checked() {
        let s = CensusSummary {
            magic: CENSUS_MAGIC,
            visited: 3,
            ..CensusSummary::default()
        };
        // SAFETY: plain data.
        let bytes: [u8; CENSUS_SUMMARY_SIZE] = unsafe { std::mem::transmute(s) };
        assert_eq!(parse_summary(&bytes).unwrap().visited, 3);
        assert!(parse_summary(&bytes[..10]).is_err());
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(parse_summary(&bad).is_err());
    }
}
