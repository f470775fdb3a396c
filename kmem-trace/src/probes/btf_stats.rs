//! The memcg counters whose place varies most between kernels: the swap page
//! counter (v1 or v2, union or not) and the page-state counters the census
//! reads (where `struct memcg_vmstats` keeps each one: its array and slot).

use kmem_trace_common::{census_stat, Layout, LAYOUT_STATS_HIER, LAYOUT_VMSTATS_PTR};

use super::{BtfError, KernelBtf, Resolved};
use crate::cgroupfs::CgroupVersion;

impl KernelBtf {
    /// `mem_cgroup`'s swap counter. On v2 it is `swap`; on v1, `memsw` (memory
    /// plus swap; `TraceEvent::counters` subtracts memory on v1 hierarchies).
    /// Since 5.10 ("mm/memcg: unify swap and memsw page counters", commit
    /// b3ff92916af3) the two share an anonymous union, as only one hierarchy
    /// can hold the controller. Before (`swap` came in 4.8 with the cgroup2
    /// swap controller, commit 37e84351198b) they are separate fields, and
    /// the other one stays zero: v1 charges only `memsw`
    /// (`do_memsw_account()`), v2 only `swap`. There the hierarchy picks; when
    /// it is unknown, `memsw`, as the distributions of those kernels (RHEL 8,
    /// Ubuntu 20.04, Amazon Linux 2) mount the memory controller on v1.
    pub(super) fn swap_counter(
        &self,
        memory: Option<CgroupVersion>,
        layout: &mut Layout,
        report: &mut Vec<Resolved>,
    ) -> Result<(), BtfError> {
        let find = |counter: &str| -> Result<Option<(String, u32)>, BtfError> {
            for tail in ["usage.counter", "usage"] {
                let path = format!("{counter}.{tail}");
                if let Some(m) = self.member("mem_cgroup", &path)? {
                    return Ok(Some((path, m.offset)));
                }
            }
            Ok(None)
        };
        let swap = find("swap")?;
        let memsw = find("memsw")?;
        let (hit, note) = match (swap, memsw) {
            (Some(s), Some(m)) if s.1 == m.1 => (Some(s), "union of swap (v2) and memsw (v1)"),
            (Some(s), Some(m)) => match memory {
                Some(CgroupVersion::V2) => (Some(s), "v2; separate from memsw before 5.10"),
                Some(CgroupVersion::V1) => (Some(m), "v1; separate from swap before 5.10"),
                None => (
                    Some(m),
                    "hierarchy unknown, taken as v1; separate from swap before 5.10",
                ),
            },
            (Some(s), None) => (Some(s), "v2 only"),
            (None, Some(m)) => (Some(m), "v1 only, before 4.8"),
            (None, None) => (None, ""),
        };
        report.push(match hit {
            Some((path, offset)) => {
                layout.memcg_swap_usage = offset;
                Resolved {
                    field: "memcg_swap_usage",
                    found: format!("mem_cgroup.{path} ({note})"),
                    offset: Some(offset),
                }
            }
            None => Resolved {
                field: "memcg_swap_usage",
                found: "absent".into(),
                offset: None,
            },
        });
        Ok(())
    }

    /// Where a memcg's own page-state counters are: `mem_cgroup.vmstats`
    /// and, inside `struct memcg_vmstats`, the slots of the counters the census
    /// reads ([`census_stat`]). Leaves them [`ABSENT`] on kernels without that
    /// struct or without the names; the pin cause is then
    /// approximate (see `census::pin`).
    pub(super) fn vmstats(
        &self,
        layout: &mut Layout,
        report: &mut Vec<Resolved>,
    ) -> Result<(), BtfError> {
        let Some(vm) = self.member("mem_cgroup", "vmstats")? else {
            return Ok(());
        };
        // A pointer on recent kernels, an embedded struct on older ones: BTF tells.
        let ptr = vm.size == 8 && !vm.aggregate;
        // `state_local[]` (where the kernel has it: BTF tells) is the memcg's own
        // share; without it only the hierarchical `state[]`, equal to it on leaves.
        let (array, hier) = match self.array_member("memcg_vmstats", "state_local")? {
            Some(a) => (a, false),
            None => match self.array_member("memcg_vmstats", "state")? {
                Some(a) => (a, true),
                None => return Ok(()),
            },
        };
        let Some(nr_stat) = self.enum_value("memcg_stat_item", "MEMCG_NR_STAT") else {
            return Ok(());
        };
        let mut any = false;
        for stat in &STATS {
            let (slot, name) = (stat.slot, stat.name);
            let index = self
                .enum_value(stat.item.enum_name(), name)
                .and_then(|v| stat_index(name, v, nr_stat, array.len));
            if let Some(i) = index {
                layout.stat_off[slot] = array.offset + i * 8;
                any = true;
            }
            report.push(Resolved {
                field: "memcg_vmstats.stat",
                found: match index {
                    Some(i) => format!("memcg_vmstats.{}[{i}] ({name})", array.name),
                    None => format!("absent ({name})"),
                },
                offset: index.map(|i| array.offset + i * 8),
            });
        }
        if any {
            layout.memcg_vmstats = vm.offset;
            if ptr {
                layout.layout_flags |= LAYOUT_VMSTATS_PTR;
            }
            if hier {
                layout.layout_flags |= LAYOUT_STATS_HIER;
            }
            report.push(Resolved {
                field: "memcg_vmstats",
                found: format!(
                    "mem_cgroup.vmstats ({})",
                    if ptr { "pointer" } else { "embedded" }
                ),
                offset: Some(vm.offset),
            });
        }
        Ok(())
    }
}

pub(super) struct ArrayInfo {
    pub(super) name: &'static str,
    pub(super) offset: u32,
    pub(super) len: u32,
}

/// Which enum a counter is a member of, and so where 6.10+ keeps it.
#[derive(Clone, Copy)]
enum StatItem {
    /// `enum node_stat_item`; the position in 6.10+'s `memcg_node_stat_items[]`.
    Node(u32),
    /// `enum memcg_stat_item`.
    Memcg,
}

impl StatItem {
    fn enum_name(self) -> &'static str {
        match self {
            StatItem::Node(_) => "node_stat_item",
            StatItem::Memcg => "memcg_stat_item",
        }
    }
}

struct Stat {
    /// Index in [`census_stat`] (and `Layout::stat_off`).
    slot: usize,
    name: &'static str,
    item: StatItem,
}

/// The counters the census reads. The node items' positions in
/// `memcg_node_stat_items[]` are not in BTF; its first twenty entries have not
/// moved from 6.10 to 6.18 (checked against `memory.stat` of a memcg of known
/// content by the census root test).
#[rustfmt::skip]
const STATS: [Stat; census_stat::N] = [
    Stat { slot: census_stat::FILE, name: "NR_FILE_PAGES", item: StatItem::Node(16) },
    Stat { slot: census_stat::SHMEM, name: "NR_SHMEM", item: StatItem::Node(19) },
    Stat { slot: census_stat::ANON, name: "NR_ANON_MAPPED", item: StatItem::Node(14) },
    Stat { slot: census_stat::KMEM, name: "MEMCG_KMEM", item: StatItem::Memcg },
    Stat { slot: census_stat::SWAP, name: "MEMCG_SWAP", item: StatItem::Memcg },
    Stat { slot: census_stat::SOCK, name: "MEMCG_SOCK", item: StatItem::Memcg },
];

/// Slot of counter `name` of [`STATS`] (enum value `value`) in a
/// `memcg_vmstats` array of `len` entries, `MEMCG_NR_STAT` being `nr_stat`;
/// `None` for a name not in [`STATS`]. Kernel table:
/// - `len == MEMCG_NR_STAT` (up to 6.9): indexed by the enum value itself.
/// - shorter (6.10+, "memcg: reduce memory for the lruvec and memcg stats",
///   Shakeel Butt): `memcg_stats_index()` maps through `memcg_node_stat_items[]`
///   followed by `memcg_stat_items[]` (every `memcg_stat_item`, in enum order,
///   so those sit at the array's end).
pub(crate) fn stat_index(name: &str, value: i64, nr_stat: i64, len: u32) -> Option<u32> {
    let item = STATS.iter().find(|s| s.name == name)?.item;
    let len = len as i64;
    let i = if len == nr_stat {
        value
    } else {
        match item {
            StatItem::Node(i) => i as i64,
            StatItem::Memcg => len - (nr_stat - value),
        }
    };
    (0..len).contains(&i).then_some(i as u32)
}
