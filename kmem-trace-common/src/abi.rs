//! The byte layout of every record the eBPF programs and userspace share
//! ([`Event`], [`Layout`], [`CensusSummary`]), asserted at compile time on
//! every target this crate is built for: `bpfel-unknown-none` (the programs),
//! and x86_64 and aarch64 (the tracer). Both sides read the same bytes, and an
//! aarch64 tracer built against an x86_64-shaped record would misread every
//! event, so a layout that differs on any of them fails that build instead.

use crate::{CensusSummary, Event, Layout, CENSUS_SUMMARY_SIZE, EVENT_SIZE, LAYOUT_SIZE};

/// One field of a shared record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// Byte offset in the record (asserted with `offset_of!`).
    pub offset: usize,
    pub size: usize,
}

/// One shared record: its size and alignment (asserted) and every field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: &'static str,
    pub size: usize,
    pub align: usize,
    pub fields: &'static [Field],
}

/// The size of the field `_pick` selects; the accessor is only named for its
/// type, never called, which is what lets a `const` use it.
const fn field_size<T, F>(_pick: fn(&T) -> &F) -> usize {
    core::mem::size_of::<F>()
}

/// A [`Record`] whose size, alignment and field offsets are asserted where
/// it is written, so the numbers in the table are the checked ones.
macro_rules! record {
    ($ty:ident, size $size:expr, align $align:expr, { $($field:ident @ $off:expr),* $(,)? }) => {{
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
        const _: () = assert!(core::mem::align_of::<$ty>() == $align);
        $(const _: () = assert!(core::mem::offset_of!($ty, $field) == $off);)*
        Record {
            name: stringify!($ty),
            size: $size,
            align: $align,
            fields: &[$(Field {
                name: stringify!($field),
                offset: $off,
                size: field_size(|r: &$ty| &r.$field),
            }),*],
        }
    }};
}

/// Every shared record, field by field in declaration order.
pub const RECORDS: &[Record] = &[
    record!(Event, size EVENT_SIZE, align 8, {
        kind @ 0, flags @ 4, ts_ns @ 8, memcg_addr @ 16, cgroup_id @ 24,
        parent_cgroup_id @ 32, memcg_id @ 40, hierarchy_id @ 44, level @ 48,
        pid @ 52, tgid @ 56, ppid @ 60, hook @ 64, name_len @ 66, _pad0 @ 68,
        mem_pages @ 72, kmem_pages @ 80, swap_pages @ 88, aux @ 96,
        comm @ 104, pcomm @ 120, name @ 136,
    }),
    record!(Layout, size LAYOUT_SIZE, align 8, {
        memory_subsys_id @ 0, layout_flags @ 4, cgroup_kn @ 8, cgroup_level @ 12,
        cgroup_root @ 16, cgroup_subsys @ 20, css_cgroup @ 24, css_parent @ 28,
        css_flags @ 32, css_ss @ 36, css_children @ 40, css_sibling @ 44,
        cgroup_subsys_id_field @ 48, root_hierarchy_id @ 52, root_subsys_mask @ 56,
        kn_id @ 60, kn_name @ 64, kn_parent @ 68, memcg_css @ 72, memcg_id @ 76,
        memcg_id_ref @ 80, memcg_memory_usage @ 84, memcg_swap_usage @ 88,
        memcg_kmem_usage @ 92, memcg_kmemcg_id @ 96, memcg_objcg @ 100,
        task_real_parent @ 104, task_tgid @ 108, task_pid @ 112, task_comm @ 116,
        task_cgroups @ 120, css_set_subsys @ 124, work_func @ 128,
        css_destroy_work @ 132, css_destroy_rwork @ 136, css_id @ 140,
        fn_css_release_work @ 144, fn_css_free_work @ 152, max_residents @ 160,
        _pad1 @ 164, memcg_vmstats @ 168, stat_off @ 172, _pad2 @ 196,
    }),
    record!(CensusSummary, size CENSUS_SUMMARY_SIZE, align 8, {
        magic @ 0, flags @ 4, visited @ 8, online @ 16, dying @ 24,
        emitted @ 32, dropped @ 40, steps @ 48, start_ns @ 56, end_ns @ 64,
    }),
];

/// True when the fields tile the record: each starts where the one before
/// ended and the last ends at the record's size. With the offsets asserted,
/// that rules out implicit padding (bytes the two sides could disagree on,
/// and that `Event::as_bytes` must not expose) and a field left out of the table.
const fn tiles(r: &Record) -> bool {
    let mut end = 0;
    let mut i = 0;
    while i < r.fields.len() {
        if r.fields[i].offset != end {
            return false;
        }
        end += r.fields[i].size;
        i += 1;
    }
    end == r.size
}

const _: () = {
    let mut i = 0;
    while i < RECORDS.len() {
        assert!(
            tiles(&RECORDS[i]),
            "a shared record has padding or a field missing from abi::RECORDS"
        );
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String};

    use super::*;

    /// The table, one line per field: what both architectures agree on
    /// (`cargo test -p kmem-trace-common -- --nocapture` prints it).
    #[test]
    fn layouts_listed() {
        let mut text = String::new();
        for r in RECORDS {
            assert!(tiles(r), "{}", r.name);
            text += &format!("{} size {} align {}\n", r.name, r.size, r.align);
            for f in r.fields {
                text += &format!("  {:<24} @ {:>3} +{}\n", f.name, f.offset, f.size);
            }
        }
        std::println!("{text}");
        assert!(text.starts_with("Event size 264 align 8\n  kind"), "{text}");
        assert!(
            text.contains("  name                     @ 136 +128\n"),
            "{text}"
        );
        assert!(
            text.contains("  stat_off                 @ 172 +24\n"),
            "{text}"
        );
        assert!(text.contains("CensusSummary size 72 align 8\n"), "{text}");
        assert_eq!(
            RECORDS.iter().map(|r| r.fields.len()).sum::<usize>(),
            22 + 43 + 10
        );
    }
}
