//! Kernel struct layout from BTF: resolves every member offset the eBPF programs
//! read, trying the alternatives kernels have used for renamed members, and says
//! which one it took. Works on any BTF blob (`/sys/kernel/btf/vmlinux` or `--btf`:
//! a raw file or a BTFHub archive, see `btf_archive`).

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};

use crate::cgroupfs::CgroupVersion;
use kmem_trace_common::{Layout, ABSENT, LAYOUT_KN_ID_U32};

#[path = "btf_min.rs"]
mod min;
#[path = "btf_stats.rs"]
mod stats;
#[cfg(test)]
pub(crate) use stats::stat_index;
use stats::ArrayInfo;

/// Errors of BTF loading and layout resolution.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("no kernel BTF at {path}: {reason}; this kernel needs CONFIG_DEBUG_INFO_BTF, or pass a matching BTF file with --btf FILE")]
    Unreadable { path: PathBuf, reason: String },
    #[error("kernel layout lacks {member} (tried: {tried}); kmem-trace does not support this kernel layout yet, or --btf points at the BTF of another kernel")]
    MissingMember { member: String, tried: String },
    #[error("kernel BTF has no `{0}`; the kernel was built without the memory controller, or --btf points at the BTF of another kernel")]
    MissingType(String),
    #[error("reading BTF: {0}")]
    Format(String),
    #[error(transparent)]
    Archive(#[from] super::btf_archive::ArchiveError),
}

/// A loaded kernel BTF.
pub struct KernelBtf {
    btf: Btf,
    pub path: PathBuf,
    /// Structs found by name: `layout()` asks for the same few structs dozens
    /// of times, and each lookup scans the whole BTF with [`KernelBtf::load_mapped`].
    structs: std::sync::Mutex<std::collections::HashMap<String, Vec<Type>>>,
    /// Struct member paths and enums the resolver asked for, when recording
    /// (`btf --minimize` keeps exactly these).
    queries: std::sync::Mutex<Option<Vec<Query>>>,
}

/// One resolved member, for `--verbose` and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// The `Layout` field it fills.
    pub field: &'static str,
    /// `struct.member.path` as found, or `absent`.
    pub found: String,
    pub offset: Option<u32>,
}

/// Which `Layout` field comes from which struct members, in order of preference.
struct Spec {
    field: &'static str,
    strukt: &'static str,
    paths: &'static [&'static str],
    required: bool,
}

const fn req(field: &'static str, strukt: &'static str, paths: &'static [&'static str]) -> Spec {
    Spec {
        field,
        strukt,
        paths,
        required: true,
    }
}
const fn opt(field: &'static str, strukt: &'static str, paths: &'static [&'static str]) -> Spec {
    Spec {
        field,
        strukt,
        paths,
        required: false,
    }
}

/// The members kmem-trace reads. Alternatives cite where the kernel renamed them.
const SPECS: &[Spec] = &[
    req("cgroup_kn", "cgroup", &["kn"]),
    req("cgroup_level", "cgroup", &["level"]),
    req("cgroup_root", "cgroup", &["root"]),
    req("cgroup_subsys", "cgroup", &["subsys"]),
    req("css_cgroup", "cgroup_subsys_state", &["cgroup"]),
    req("css_parent", "cgroup_subsys_state", &["parent"]),
    opt("css_flags", "cgroup_subsys_state", &["flags"]),
    req("css_ss", "cgroup_subsys_state", &["ss"]),
    opt("css_children", "cgroup_subsys_state", &["children"]),
    opt("css_sibling", "cgroup_subsys_state", &["sibling"]),
    opt("css_id", "cgroup_subsys_state", &["id"]),
    req("cgroup_subsys_id_field", "cgroup_subsys", &["id"]),
    req("root_hierarchy_id", "cgroup_root", &["hierarchy_id"]),
    req("root_subsys_mask", "cgroup_root", &["subsys_mask"]),
    req("kn_name", "kernfs_node", &["name"]),
    // 6.15 renamed `parent` to `__parent` (commit 633488947ef6, RCU-protected access).
    opt("kn_parent", "kernfs_node", &["__parent", "parent"]),
    req("memcg_css", "mem_cgroup", &["css"]),
    // `struct mem_cgroup_id id` arrived in 4.6 (commit 73f576c04b94); before, the css ID was used.
    opt("memcg_id", "mem_cgroup", &["id.id"]),
    opt(
        "memcg_id_ref",
        "mem_cgroup",
        &["id.ref.refs.counter", "id.ref.counter", "id.ref"],
    ),
    // `page_counter` replaced `res_counter` in 3.19 (commit 3e32cb2e0a12).
    opt(
        "memcg_memory_usage",
        "mem_cgroup",
        &["memory.usage.counter", "memory.usage", "res.usage"],
    ),
    // `memcg_swap_usage`: see `KernelBtf::swap_counter` (v1 and v2 differ).
    opt(
        "memcg_kmem_usage",
        "mem_cgroup",
        &["kmem.usage.counter", "kmem.usage"],
    ),
    opt("memcg_kmemcg_id", "mem_cgroup", &["kmemcg_id"]),
    opt("memcg_objcg", "mem_cgroup", &["objcg"]),
    req("task_real_parent", "task_struct", &["real_parent"]),
    req("task_tgid", "task_struct", &["tgid"]),
    req("task_pid", "task_struct", &["pid"]),
    req("task_comm", "task_struct", &["comm"]),
    opt("task_cgroups", "task_struct", &["cgroups"]),
    opt("css_set_subsys", "css_set", &["subsys"]),
    opt("work_func", "work_struct", &["func"]),
    opt("css_destroy_work", "cgroup_subsys_state", &["destroy_work"]),
    opt(
        "css_destroy_rwork",
        "cgroup_subsys_state",
        &["destroy_rwork.work", "destroy_rwork"],
    ),
];

/// The given BTF file, else the running kernel's.
fn btf_path(path: Option<&Path>) -> PathBuf {
    path.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"))
}

impl KernelBtf {
    /// Loads `/sys/kernel/btf/vmlinux` or the given file.
    pub fn load(path: Option<&Path>) -> Result<KernelBtf, BtfError> {
        let path = btf_path(path);
        // Read the file whole, then parse from memory: btf-rs asks its reader
        // for the stream position once per type, which on a `BufReader<File>`
        // is an lseek(2) each, ~150k of them on sysfs (a fifth of start-up,
        // docs/PERFORMANCE.md).
        let unreadable = |e: &dyn std::fmt::Display| BtfError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        };
        // Same wording as btf-rs's own read errors (the message users see).
        let bytes = std::fs::read(&path).map_err(|e| unreadable(&format!("i/o error: {e}")))?;
        // A BTFHub archive is unpacked here (raw BTF passes through as is).
        let bytes = super::btf_archive::from_bytes(&path, bytes, &super::kernel::release())?;
        let btf = Btf::from_bytes(&bytes).map_err(|e| unreadable(&e))?;
        Ok(KernelBtf {
            btf,
            path,
            structs: Default::default(),
            queries: Default::default(),
        })
    }

    /// Like [`KernelBtf::load`], but maps the file instead of parsing all of
    /// it: about 1 ms instead of 100 ms for vmlinux, each lookup slower (the
    /// struct lookups of [`KernelBtf::layout`] are cached). sysfs BTF can be
    /// mapped from 6.16 on; where it cannot, this parses it like `load`.
    pub fn load_mapped(path: Option<&Path>) -> Result<KernelBtf, BtfError> {
        let p = btf_path(path);
        match Btf::from_file_with_backend(&p, btf_rs::Backend::Mmap) {
            Ok(btf) => Ok(KernelBtf {
                btf,
                path: p,
                structs: Default::default(),
                queries: Default::default(),
            }),
            Err(_) => KernelBtf::load(path),
        }
    }

    /// From raw BTF bytes (tests).
    pub fn from_bytes(bytes: &[u8]) -> Result<KernelBtf, BtfError> {
        let btf = Btf::from_bytes(bytes).map_err(|e| BtfError::Format(e.to_string()))?;
        Ok(KernelBtf {
            btf,
            path: PathBuf::from("<bytes>"),
            structs: Default::default(),
            queries: Default::default(),
        })
    }

    /// True when the kernel has a function `name` in BTF (fentry needs it).
    pub fn has_func(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|ts| ts.iter().any(|t| matches!(t, Type::Func(_))))
            .unwrap_or(false)
    }

    /// The number of parameters in function `name`'s BTF prototype: the fexit
    /// context slot of its return value (`btf_ctx_access()`).
    pub fn func_params(&self, name: &str) -> Option<u32> {
        let ts = self.btf.resolve_types_by_name(name).ok()?;
        let func = ts.iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        match self.btf.resolve_chained_type(func).ok()? {
            Type::FuncProto(p) => Some(p.parameters.len() as u32),
            _ => None,
        }
    }

    /// The BTF id of function `name` (what a program attaching to it names).
    pub fn func_id(&self, name: &str) -> Option<u32> {
        let ids = self.btf.resolve_ids_by_name(name).ok()?;
        ids.into_iter()
            .find(|id| matches!(self.btf.resolve_type_by_id(*id), Ok(Type::Func(_))))
    }

    /// True when the kernel has the tracepoint (its `btf_trace_<name>` typedef).
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .map(|ts| !ts.is_empty())
            .unwrap_or(false)
    }

    /// Value of an enumerator, e.g. `memory_cgrp_id` in `enum cgroup_subsys_id`.
    pub fn enum_value(&self, enum_name: &str, member: &str) -> Option<i64> {
        self.record(Query::Enum(enum_name.to_string()));
        for t in self.btf.resolve_types_by_name(enum_name).ok()? {
            match t {
                Type::Enum(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok()? == member {
                            return Some(m.val() as i32 as i64);
                        }
                    }
                }
                Type::Enum64(e) => {
                    for m in &e.members {
                        if self.btf.resolve_name(m).ok()? == member {
                            return Some(m.val() as i64);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Resolves the whole [`Layout`]; errors name the first required member
    /// missing. The memory controller's hierarchy is taken as unknown (see
    /// [`KernelBtf::layout_for`]).
    pub fn layout(&self) -> Result<(Layout, Vec<Resolved>), BtfError> {
        self.layout_for(None)
    }

    /// [`KernelBtf::layout`] for a memory controller on cgroup `memory` (v1 or
    /// v2; `None` when not known), which picks the swap counter where the
    /// kernel keeps v1's and v2's apart (`swap_counter`).
    pub fn layout_for(
        &self,
        memory: Option<CgroupVersion>,
    ) -> Result<(Layout, Vec<Resolved>), BtfError> {
        let mut layout = Layout::EMPTY;
        let mut report = Vec::with_capacity(SPECS.len() + 2);
        let memory_id = self
            .enum_value("cgroup_subsys_id", "memory_cgrp_id")
            .ok_or_else(|| {
                BtfError::MissingType("enum cgroup_subsys_id { memory_cgrp_id }".into())
            })?;
        layout.memory_subsys_id = memory_id as u32;
        report.push(Resolved {
            field: "memory_subsys_id",
            found: "enum cgroup_subsys_id.memory_cgrp_id".into(),
            offset: Some(memory_id as u32),
        });
        for spec in SPECS {
            let mut hit = None;
            for path in spec.paths {
                if let Some(m) = self.member(spec.strukt, path)? {
                    hit = Some((path, m));
                    break;
                }
            }
            match hit {
                Some((path, m)) => {
                    *field_mut(&mut layout, spec.field) = m.offset;
                    report.push(Resolved {
                        field: spec.field,
                        found: format!("{}.{}", spec.strukt, path),
                        offset: Some(m.offset),
                    });
                }
                None if spec.required => {
                    return Err(BtfError::MissingMember {
                        member: format!("struct {} member `{}`", spec.strukt, spec.paths[0]),
                        tried: spec.paths.join(", "),
                    })
                }
                None => report.push(Resolved {
                    field: spec.field,
                    found: "absent".into(),
                    offset: None,
                }),
            }
        }
        // kernfs_node.id: u64 since 5.5 (commit 67c0496e87d1); before, a union
        // whose `ino` is the inode number cgroupfs shows.
        match self.member("kernfs_node", "id")? {
            Some(m) if m.size == 8 && !m.aggregate => {
                layout.kn_id = m.offset;
                report.push(Resolved {
                    field: "kn_id",
                    found: "kernfs_node.id".into(),
                    offset: Some(m.offset),
                });
            }
            _ => match self.member("kernfs_node", "id.ino")? {
                Some(m) => {
                    layout.kn_id = m.offset;
                    layout.layout_flags |= LAYOUT_KN_ID_U32;
                    report.push(Resolved {
                        field: "kn_id",
                        found: "kernfs_node.id.ino".into(),
                        offset: Some(m.offset),
                    });
                }
                None => {
                    return Err(BtfError::MissingMember {
                        member: "struct kernfs_node member `id`".into(),
                        tried: "id, id.ino".into(),
                    })
                }
            },
        }
        self.swap_counter(memory, &mut layout, &mut report)?;
        self.vmstats(&mut layout, &mut report)?;
        Ok((layout, report))
    }

    /// Offset and length of the array member `strukt.name` of `long`s.
    fn array_member(
        &self,
        strukt: &str,
        name: &'static str,
    ) -> Result<Option<ArrayInfo>, BtfError> {
        self.record(Query::Member(strukt.to_string(), name.to_string()));
        for ty in self.find_struct(strukt)? {
            let Some((bits, mty)) = self.find_member(&ty, name)? else {
                continue;
            };
            return match self.strip(mty)? {
                Type::Array(a) if a.len() > 0 => Ok(Some(ArrayInfo {
                    name,
                    offset: bits / 8,
                    len: a.len() as u32,
                })),
                _ => Ok(None),
            };
        }
        Ok(None)
    }

    /// Offset (bytes) and size of `strukt.a.b.c`, looking through anonymous
    /// structs and unions; `Ok(None)` when the struct or a member is missing.
    fn member(&self, strukt: &str, path: &str) -> Result<Option<MemberInfo>, BtfError> {
        self.record(Query::Member(strukt.to_string(), path.to_string()));
        for ty in self.find_struct(strukt)? {
            if let Some(m) = self.member_of(ty, path)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// [`KernelBtf::member`] in one candidate struct `ty`.
    fn member_of(&self, mut ty: Type, path: &str) -> Result<Option<MemberInfo>, BtfError> {
        let mut offset = 0u32;
        let mut last = None;
        for name in path.split('.') {
            let Some((bits, member_ty)) = self.find_member(&ty, name)? else {
                return Ok(None);
            };
            offset += bits / 8;
            ty = self.strip(member_ty)?;
            last = Some(());
        }
        if last.is_none() {
            return Ok(None);
        }
        let (size, aggregate) = self.size_of(&ty)?;
        Ok(Some(MemberInfo {
            offset,
            size,
            aggregate,
        }))
    }

    /// Every complete struct named `name`, the most complete first. BTFHub
    /// files for old kernels are converted from DWARF per compilation unit, so
    /// one name can appear several times: as a forward declaration (`BTF_KIND_FWD`,
    /// skipped by the kind match), as an empty or partial copy where a CU saw
    /// only part of it, and whole. The one with the most members (then the
    /// largest) is the whole one; the rest are kept as fallbacks for a member
    /// the first lacks.
    fn find_struct(&self, name: &str) -> Result<Vec<Type>, BtfError> {
        if let Some(t) = self.structs.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(t);
        }
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        let mut found: Vec<Type> = types
            .into_iter()
            .filter(|t| matches!(t, Type::Struct(s) if !s.members.is_empty() && s.size() > 0))
            .collect();
        found.sort_by_key(|t| match t {
            Type::Struct(s) => std::cmp::Reverse((s.members.len(), s.size())),
            _ => std::cmp::Reverse((0, 0)),
        });
        if let Ok(mut m) = self.structs.lock() {
            m.insert(name.to_string(), found.clone());
        }
        Ok(found)
    }

    /// Bit offset and type of member `name` of struct/union `ty`, recursing into
    /// anonymous members.
    fn find_member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let members = match ty {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for m in members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.btf.resolve_chained_type(m).map_err(fmt_err)?;
            if mname == name {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if mname.is_empty() {
                let inner = self.strip(mty)?;
                if let Some((bits, t)) = self.find_member(&inner, name)? {
                    return Ok(Some((m.bit_offset() + bits, t)));
                }
            }
        }
        Ok(None)
    }

    fn record(&self, q: Query) {
        if let Ok(mut g) = self.queries.lock() {
            if let Some(v) = g.as_mut() {
                v.push(q);
            }
        }
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type, BtfError> {
        for _ in 0..32 {
            match &ty {
                Type::Typedef(t) => ty = self.btf.resolve_chained_type(t).map_err(fmt_err)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    ty = self.btf.resolve_chained_type(t).map_err(fmt_err)?
                }
                Type::TypeTag(t) => ty = self.btf.resolve_chained_type(t).map_err(fmt_err)?,
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Format("type chain too long".into()))
    }

    fn size_of(&self, ty: &Type) -> Result<(u32, bool), BtfError> {
        Ok(match ty {
            Type::Int(i) => (i.size() as u32, false),
            Type::Ptr(_) => (8, false),
            Type::Enum(e) => (e.size() as u32, false),
            Type::Struct(s) | Type::Union(s) => (s.size() as u32, true),
            Type::Array(_) => (0, true),
            _ => (0, false),
        })
    }
}

/// One lookup of the resolver, recorded for `btf --minimize`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Query {
    /// `struct`, `a.b.c` member path.
    Member(String, String),
    /// An enum by name.
    Enum(String),
}

struct MemberInfo {
    offset: u32,
    size: u32,
    aggregate: bool,
}

fn fmt_err(e: btf_rs::Error) -> BtfError {
    BtfError::Format(e.to_string())
}

/// The `Layout` field named `name`. Kept as one match so the spec table above
/// stays plain data.
fn field_mut<'a>(l: &'a mut Layout, name: &str) -> &'a mut u32 {
    match name {
        "cgroup_kn" => &mut l.cgroup_kn,
        "cgroup_level" => &mut l.cgroup_level,
        "cgroup_root" => &mut l.cgroup_root,
        "cgroup_subsys" => &mut l.cgroup_subsys,
        "css_cgroup" => &mut l.css_cgroup,
        "css_parent" => &mut l.css_parent,
        "css_flags" => &mut l.css_flags,
        "css_ss" => &mut l.css_ss,
        "css_children" => &mut l.css_children,
        "css_sibling" => &mut l.css_sibling,
        "css_id" => &mut l.css_id,
        "cgroup_subsys_id_field" => &mut l.cgroup_subsys_id_field,
        "root_hierarchy_id" => &mut l.root_hierarchy_id,
        "root_subsys_mask" => &mut l.root_subsys_mask,
        "kn_name" => &mut l.kn_name,
        "kn_parent" => &mut l.kn_parent,
        "memcg_css" => &mut l.memcg_css,
        "memcg_id" => &mut l.memcg_id,
        "memcg_id_ref" => &mut l.memcg_id_ref,
        "memcg_memory_usage" => &mut l.memcg_memory_usage,
        "memcg_swap_usage" => &mut l.memcg_swap_usage,
        "memcg_kmem_usage" => &mut l.memcg_kmem_usage,
        "memcg_kmemcg_id" => &mut l.memcg_kmemcg_id,
        "memcg_objcg" => &mut l.memcg_objcg,
        "task_real_parent" => &mut l.task_real_parent,
        "task_tgid" => &mut l.task_tgid,
        "task_pid" => &mut l.task_pid,
        "task_comm" => &mut l.task_comm,
        "task_cgroups" => &mut l.task_cgroups,
        "css_set_subsys" => &mut l.css_set_subsys,
        "work_func" => &mut l.work_func,
        "css_destroy_work" => &mut l.css_destroy_work,
        "css_destroy_rwork" => &mut l.css_destroy_rwork,
        other => unreachable!("layout spec names unknown field {other}"),
    }
}

/// True for a member that was resolved.
pub fn present(off: u32) -> bool {
    off != ABSENT
}

#[cfg(test)]
#[path = "btf_tests.rs"]
pub(crate) mod tests;
