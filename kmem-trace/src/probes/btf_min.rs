//! `kmem-trace btf --minimize`: a BTF holding only what kmem-trace reads, a few
//! KB to ship per kernel where the kernel has no `/sys/kernel/btf/vmlinux`
//! (the idea of `bpftool gen min_core_btf`). It keeps, for every lookup the
//! layout resolver makes, the members on the path (anonymous unions and
//! structs included, at their offsets, in their order) with the kind and size
//! of the last one; the enums it reads whole; and, for the probe table's
//! symbols, the BTF functions (parameter count) and `btf_trace_*` typedefs.
//! Type ids are not kept: the file serves layouts and hook checks, not
//! programs that attach by BTF id (those need the kernel's own BTF anyway).

use std::collections::{BTreeMap, HashMap};

use btf_rs::Type;

use super::{fmt_err, BtfError, KernelBtf, Query};
use crate::cgroupfs::CgroupVersion;

/// A copied struct or union: only the members some lookup went through.
struct Node {
    union: bool,
    name: String,
    size: u32,
    /// By index in the original, so the order (and with it which of two
    /// same-named members a lookup finds first) is kept.
    members: BTreeMap<usize, (String, u32, Child)>,
}

/// One member on the way to a looked-up one: index in its parent, name, bit
/// offset, type.
type Hop = (usize, String, u32, Type);

enum Child {
    Node(Node),
    Leaf(Leaf),
}

/// What the resolver asks of a member's type: its size, whether it is an
/// aggregate, an array's length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Leaf {
    Void,
    Int(u32),
    Ptr,
    Enum(u32),
    Array(u32),
}

impl KernelBtf {
    /// Resolves the layout as `watch` does, for both places the memory
    /// controller can be, and returns every lookup made (each once).
    pub(crate) fn layout_queries(&self) -> Result<Vec<Query>, BtfError> {
        if let Ok(mut g) = self.queries.lock() {
            *g = Some(Vec::new());
        }
        let v1 = self.layout_for(Some(CgroupVersion::V1));
        let v2 = self.layout_for(Some(CgroupVersion::V2));
        let mut out = self
            .queries
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .unwrap_or_default();
        v1?;
        v2?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The minimized BTF of this one, checked to resolve to the same layout
    /// for both cgroup versions before it is returned.
    pub fn minimize(&self) -> Result<Vec<u8>, BtfError> {
        let mut structs: BTreeMap<String, Node> = BTreeMap::new();
        let mut enums: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for q in self.layout_queries()? {
            match q {
                Query::Member(strukt, path) => self.keep_path(&mut structs, &strukt, &path)?,
                Query::Enum(name) => {
                    if let Some(values) = self.enum_values(&name) {
                        enums.insert(name, values);
                    }
                }
            }
        }
        let mut w = Writer::default();
        for node in structs.into_values() {
            w.node(&node);
        }
        for (name, values) in &enums {
            w.enumeration(name, values);
        }
        for sym in hook_symbols() {
            if let Some(n) = self.func_params(sym) {
                w.func(sym, n);
            }
            let tp = super::super::table::tracepoint_name(sym);
            if self.has_tracepoint(tp) {
                w.tracepoint(tp);
            }
        }
        let out = w.build();
        let small = KernelBtf::from_bytes(&out)?;
        for h in [CgroupVersion::V1, CgroupVersion::V2] {
            if small.layout_for(Some(h))? != self.layout_for(Some(h))? {
                return Err(BtfError::Format(format!(
                    "the minimized BTF resolves another {} layout than its source; this is a kmem-trace bug, please report it",
                    h.name()
                )));
            }
        }
        Ok(out)
    }

    /// Copies `strukt.path` from the first candidate struct it resolves in
    /// (the one [`KernelBtf::member`] takes); nothing when it resolves in none.
    fn keep_path(
        &self,
        structs: &mut BTreeMap<String, Node>,
        strukt: &str,
        path: &str,
    ) -> Result<(), BtfError> {
        for ty in self.find_struct(strukt)? {
            if self.member_of(ty.clone(), path)?.is_none() {
                continue;
            }
            let Type::Struct(s) = &ty else { continue };
            let node = structs.entry(strukt.to_string()).or_insert_with(|| Node {
                union: false,
                name: strukt.to_string(),
                size: s.size() as u32,
                members: BTreeMap::new(),
            });
            let mut ty = ty;
            let mut node = node;
            let names: Vec<&str> = path.split('.').collect();
            for (i, name) in names.iter().enumerate() {
                let chain = self.member_chain(&ty, name)?.ok_or_else(|| {
                    BtfError::Format(format!("member {name} vanished while minimizing"))
                })?;
                let last_hop = chain.len() - 1;
                for (hop, (index, mname, bits, mty)) in chain.into_iter().enumerate() {
                    let stripped = self.strip(mty)?;
                    let child = match &stripped {
                        Type::Struct(s) | Type::Union(s) => Child::Node(Node {
                            union: matches!(stripped, Type::Union(_)),
                            name: String::new(),
                            size: s.size() as u32,
                            members: BTreeMap::new(),
                        }),
                        other => Child::Leaf(leaf(other)),
                    };
                    let entry = node.members.entry(index).or_insert((mname, bits, child));
                    ty = stripped;
                    match &mut entry.2 {
                        Child::Node(n) => node = n,
                        Child::Leaf(_) if hop == last_hop && i == names.len() - 1 => return Ok(()),
                        Child::Leaf(_) => {
                            return Err(BtfError::Format(format!(
                                "{strukt}.{path}: a scalar member has members"
                            )))
                        }
                    }
                }
            }
            return Ok(());
        }
        Ok(())
    }

    /// The members [`KernelBtf::find_member`] goes through to reach `name` in
    /// `ty`: anonymous ones, then the member itself; each as (index, name, bit
    /// offset in its parent, type).
    fn member_chain(&self, ty: &Type, name: &str) -> Result<Option<Vec<Hop>>, BtfError> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for (i, m) in members.iter().enumerate() {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.btf.resolve_chained_type(m).map_err(fmt_err)?;
            if mname == name {
                return Ok(Some(vec![(i, mname, m.bit_offset(), mty)]));
            }
            if mname.is_empty() {
                let inner = self.strip(mty.clone())?;
                if let Some(mut rest) = self.member_chain(&inner, name)? {
                    rest.insert(0, (i, mname, m.bit_offset(), mty));
                    return Ok(Some(rest));
                }
            }
        }
        Ok(None)
    }

    /// Every enumerator of the enums named `name`, first occurrence kept.
    fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for t in self.btf.resolve_types_by_name(name).ok()? {
            let values: Vec<(String, i64)> = match &t {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .filter_map(|m| Some((self.btf.resolve_name(m).ok()?, m.val() as i32 as i64)))
                    .collect(),
                Type::Enum64(e) => e
                    .members
                    .iter()
                    .filter_map(|m| Some((self.btf.resolve_name(m).ok()?, m.val() as i64)))
                    .collect(),
                _ => continue,
            };
            for (n, v) in values {
                if !out.iter().any(|(o, _)| *o == n) {
                    out.push((n, v));
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn leaf(ty: &Type) -> Leaf {
    match ty {
        Type::Int(i) => Leaf::Int(i.size() as u32),
        Type::Ptr(_) => Leaf::Ptr,
        Type::Enum(e) => Leaf::Enum(e.size() as u32),
        Type::Array(a) => Leaf::Array(a.len() as u32),
        _ => Leaf::Void,
    }
}

/// Functions and tracepoints the probe table, the resident hooks and the
/// census look up in BTF.
fn hook_symbols() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = super::super::table::TABLE
        .iter()
        .flat_map(|r| r.symbols.iter().copied())
        .chain(super::super::extras::EXTRAS.iter().map(|e| e.tracepoint))
        .chain([super::super::census::ITER_FUNC])
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

/// A BTF encoder (format: the kernel's `Documentation/bpf/btf.rst`), types
/// written children first.
#[derive(Default)]
struct Writer {
    types: Vec<u8>,
    strings: Vec<u8>,
    string_at: HashMap<String, u32>,
    leaves: HashMap<Leaf, u32>,
    count: u32,
}

impl Writer {
    fn s(&mut self, name: &str) -> u32 {
        if self.strings.is_empty() {
            self.strings.push(0);
        }
        if name.is_empty() {
            return 0;
        }
        if let Some(&off) = self.string_at.get(name) {
            return off;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.string_at.insert(name.to_string(), off);
        off
    }

    fn push(&mut self, words: &[u32]) -> u32 {
        for w in words {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn leaf(&mut self, l: Leaf) -> u32 {
        if let Some(&id) = self.leaves.get(&l) {
            return id;
        }
        let id = match l {
            Leaf::Void => 0,
            Leaf::Int(size) => {
                let n = self.s(&format!("u{}", size * 8));
                self.push(&[n, KIND_INT << 24, size, size * 8])
            }
            Leaf::Ptr => self.push(&[0, KIND_PTR << 24, 0]),
            Leaf::Enum(size) => self.push(&[0, KIND_ENUM << 24, size]),
            Leaf::Array(len) => {
                let elem = self.leaf(Leaf::Int(1));
                let index = self.leaf(Leaf::Int(4));
                self.push(&[0, KIND_ARRAY << 24, 0, elem, index, len])
            }
        };
        self.leaves.insert(l, id);
        id
    }

    fn node(&mut self, node: &Node) -> u32 {
        let mut words = Vec::with_capacity(3 + 3 * node.members.len());
        let mut members = Vec::with_capacity(node.members.len());
        for (name, bits, child) in node.members.values() {
            let ty = match child {
                Child::Node(n) => self.node(n),
                Child::Leaf(l) => self.leaf(*l),
            };
            members.push((name.as_str(), *bits, ty));
        }
        let kind = if node.union { KIND_UNION } else { KIND_STRUCT };
        words.extend([
            self.s(&node.name),
            (kind << 24) | members.len() as u32,
            node.size,
        ]);
        for (name, bits, ty) in members {
            words.extend([self.s(name), ty, bits]);
        }
        self.push(&words)
    }

    fn enumeration(&mut self, name: &str, values: &[(String, i64)]) {
        let mut words = vec![self.s(name), (KIND_ENUM << 24) | values.len() as u32, 4];
        for (n, v) in values {
            words.extend([self.s(n), *v as i32 as u32]);
        }
        self.push(&words);
    }

    /// `name` as a function of `params` parameters (their types do not matter
    /// to kmem-trace, only their number: the fexit return slot).
    fn func(&mut self, name: &str, params: u32) {
        let int = self.leaf(Leaf::Int(8));
        let mut words = vec![0, (KIND_FUNC_PROTO << 24) | params, int];
        for _ in 0..params {
            words.extend([0, int]);
        }
        let proto = self.push(&words);
        let n = self.s(name);
        self.push(&[n, KIND_FUNC << 24, proto]);
    }

    /// The `btf_trace_<name>` typedef the kernel has for each tracepoint.
    fn tracepoint(&mut self, name: &str) {
        let ptr = self.leaf(Leaf::Ptr);
        let n = self.s(&format!("btf_trace_{name}"));
        self.push(&[n, KIND_TYPEDEF << 24, ptr]);
    }

    fn build(mut self) -> Vec<u8> {
        self.s("");
        let mut out = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        out.extend_from_slice(&0xEB9Fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        let (tl, sl) = (self.types.len() as u32, self.strings.len() as u32);
        for w in [24u32, 0, tl, tl, sl] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{kernel_like, Variant};
    use super::*;

    /// Minimizes `btf`, checks the layouts and hook lookups match, returns the size.
    fn same_after_minimizing(btf: &KernelBtf) -> usize {
        let small = btf.minimize().unwrap();
        let min = KernelBtf::from_bytes(&small).unwrap();
        for h in [Some(CgroupVersion::V1), Some(CgroupVersion::V2), None] {
            assert_eq!(min.layout_for(h).unwrap(), btf.layout_for(h).unwrap());
        }
        for sym in hook_symbols() {
            assert_eq!(min.has_func(sym), btf.has_func(sym), "{sym}");
            assert_eq!(min.func_params(sym), btf.func_params(sym), "{sym}");
            let tp = super::super::super::table::tracepoint_name(sym);
            assert_eq!(min.has_tracepoint(tp), btf.has_tracepoint(tp), "{tp}");
        }
        small.len()
    }

    #[test]
    fn minimized_synthetic_btf_resolves_the_same() {
        for v in [
            Variant::default(),
            Variant {
                kn_parent_name: "parent",
                kn_id_union: true,
                with_kmem: false,
                swap_separate: true,
                multi_cu: true,
                ..Variant::default()
            },
        ] {
            let full = kernel_like(v);
            let btf = KernelBtf::from_bytes(&full).unwrap();
            let n = same_after_minimizing(&btf);
            eprintln!("synthetic BTF: {} bytes, minimized {n} bytes", full.len());
        }
    }

    /// Needs: /sys/kernel/btf/vmlinux (any kernel with CONFIG_DEBUG_INFO_BTF).
    #[test]
    fn minimized_kernel_btf_resolves_the_same() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: {} is absent (kernel without BTF)", path.display());
            return;
        }
        let btf = KernelBtf::load(Some(path)).unwrap();
        let n = same_after_minimizing(&btf);
        let full = std::fs::metadata(path).unwrap().len();
        eprintln!("kernel BTF: {full} bytes, minimized {n} bytes");
        assert!(n < 16 * 1024, "minimized to {n} bytes");
    }
}
