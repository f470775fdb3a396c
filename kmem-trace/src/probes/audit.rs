//! Audits the embedded eBPF object: lists every helper each program calls and
//! rejects any that could write to user memory, change a return value or
//! signal a task. kmem-trace must only ever read.

use object::{Object, ObjectSection, SectionKind};
use serde::Serialize;

/// Errors of auditing the object.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the eBPF object is not a valid ELF file: {0}")]
    Elf(String),
    #[error("eBPF program section {section} calls {helper} (helper {id}); kmem-trace programs must only read")]
    Forbidden {
        section: String,
        helper: &'static str,
        id: i32,
    },
    #[error("eBPF section {0} is a program type that can change kernel behaviour; kmem-trace programs must only observe")]
    ForbiddenSection(String),
}

/// Helpers that modify state outside the program's own maps (`include/uapi/linux/bpf.h`).
pub const FORBIDDEN_HELPERS: &[(i32, &str)] = &[
    (36, "bpf_probe_write_user"),
    (58, "bpf_override_return"),
    (109, "bpf_send_signal"),
    (117, "bpf_send_signal_thread"),
    (166, "bpf_sys_bpf"),
    (187, "bpf_set_retval"),
];

/// Section prefixes of program types that alter behaviour rather than observe.
const FORBIDDEN_SECTIONS: &[&str] = &[
    "fmod_ret",
    "lsm",
    "lsm_cgroup",
    "struct_ops",
    "xdp",
    "tc",
    "classifier",
];

/// Helper ids each program section calls.
#[derive(Clone, Debug, Serialize)]
pub struct SectionAudit {
    pub section: String,
    pub instructions: usize,
    pub helpers: Vec<i32>,
}

/// Decodes every executable section and checks its helper calls.
pub fn audit(elf: &[u8]) -> Result<Vec<SectionAudit>, AuditError> {
    let file = object::File::parse(elf).map_err(|e| AuditError::Elf(e.to_string()))?;
    let mut out = Vec::new();
    for section in file.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let name = section
            .name()
            .map_err(|e| AuditError::Elf(e.to_string()))?
            .to_string();
        if FORBIDDEN_SECTIONS
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}/")))
        {
            return Err(AuditError::ForbiddenSection(name));
        }
        let data = section.data().map_err(|e| AuditError::Elf(e.to_string()))?;
        let mut helpers = Vec::new();
        for insn in data.chunks_exact(8) {
            let code = insn[0];
            let src_reg = insn[1] >> 4;
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            // BPF_JMP | BPF_CALL with src_reg 0 is a helper call (1 = bpf-to-bpf, 2 = kfunc).
            if code == 0x85 && src_reg == 0 {
                if let Some((_, helper)) = FORBIDDEN_HELPERS.iter().find(|(id, _)| *id == imm) {
                    return Err(AuditError::Forbidden {
                        section: name,
                        helper,
                        id: imm,
                    });
                }
                if !helpers.contains(&imm) {
                    helpers.push(imm);
                }
            }
        }
        helpers.sort();
        out.push(SectionAudit {
            section: name,
            instructions: data.len() / 8,
            helpers,
        });
    }
    Ok(out)
}

/// The last helper 4.18 has: `bpf_get_current_cgroup_id` (80) in the
/// append-only `__BPF_FUNC_MAPPER` of `include/uapi/linux/bpf.h`;
/// `bpf_get_local_storage` (81) came with 4.19, `bpf_probe_read_kernel` (113) 5.5.
pub const MAX_HELPER_4_18: i32 = 80;
/// 4.18's verifier limit on the instructions of one program (1M from 5.2).
pub const MAX_INSNS_4_18: usize = 4096;
/// Program section prefixes 4.18 can load without kernel BTF.
const OLD_KERNEL_SECTIONS: &[&str] = &[
    "kprobe",
    "kretprobe",
    "tracepoint/",
    "raw_tp/",
    "raw_tracepoint/",
];

/// One program of the old-kernel object.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramAudit {
    pub program: String,
    pub section: String,
    pub instructions: usize,
    pub helpers: Vec<i32>,
}

/// Checks the old-kernel object against the 4.18 floor: every helper within
/// 4.18's set, no global data (`.data`, `.rodata`, `.bss`: 5.2), fewer than
/// 4,096 instructions per program, and only program types that need no
/// kernel BTF. Returns every program, or every violation found.
pub fn audit_old_kernel(elf: &[u8]) -> Result<Vec<ProgramAudit>, Vec<String>> {
    use object::ObjectSymbol;
    let file = object::File::parse(elf).map_err(|e| vec![format!("not an ELF file: {e}")])?;
    let mut bad = Vec::new();
    let mut out = Vec::new();
    for section in file.sections() {
        let name = section.name().unwrap_or("?").to_string();
        if [".data", ".rodata", ".bss"]
            .iter()
            .any(|g| name == *g || name.starts_with(&format!("{g}.")))
        {
            bad.push(format!("section {name} is global data (5.2+)"));
        }
        if section.kind() != SectionKind::Text || name == ".text" {
            continue;
        }
        if !OLD_KERNEL_SECTIONS.iter().any(|p| name.starts_with(p)) {
            bad.push(format!(
                "section {name}: this program type needs kernel BTF or a newer kernel"
            ));
        }
    }
    for sym in file.symbols() {
        let Some(idx) = sym.section_index() else {
            continue;
        };
        let Ok(section) = file.section_by_index(idx) else {
            continue;
        };
        let sname = section.name().unwrap_or("?").to_string();
        if sym.kind() != object::SymbolKind::Text
            || section.kind() != SectionKind::Text
            || sname == ".text"
        {
            continue;
        }
        let data = section.data().map_err(|e| vec![e.to_string()])?;
        let (start, len) = (sym.address() as usize, sym.size() as usize);
        let Some(code) = data.get(start..start + len) else {
            bad.push(format!(
                "program {} lies outside its section",
                sym.name().unwrap_or("?")
            ));
            continue;
        };
        let program = sym.name().unwrap_or("?").to_string();
        let mut helpers = Vec::new();
        for insn in code.chunks_exact(8) {
            let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
            match (insn[0], insn[1] >> 4) {
                (0x85, 0) if !helpers.contains(&imm) => helpers.push(imm),
                (0x85, 2) => bad.push(format!("{program} calls a kfunc (5.13+)")),
                _ => {}
            }
        }
        helpers.sort();
        for h in helpers.iter().filter(|&&h| h > MAX_HELPER_4_18 || h <= 0) {
            bad.push(format!(
                "{program} calls helper {h}, which 4.18 does not have (last: {MAX_HELPER_4_18})"
            ));
        }
        let instructions = code.len() / 8;
        if instructions >= MAX_INSNS_4_18 {
            bad.push(format!(
                "{program} has {instructions} instructions; 4.18 loads fewer than {MAX_INSNS_4_18}"
            ));
        }
        out.push(ProgramAudit {
            program,
            section: sname,
            instructions,
            helpers,
        });
    }
    if out.is_empty() {
        bad.push("no programs found".into());
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded object, or `None` (skipped, said why) when it is the
    /// stub of a build without the eBPF toolchain. Where the root tests are
    /// required (CI, `KMEM_TRACE_REQUIRE_ROOT_TESTS`) a stub is a failure:
    /// the audit would otherwise pass by checking nothing.
    fn object_or_skip() -> Option<&'static [u8]> {
        let obj = crate::probes::object();
        if !obj.is_empty() {
            return Some(obj);
        }
        assert!(
            std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_none(),
            "built without the eBPF object (a stub) but KMEM_TRACE_REQUIRE_ROOT_TESTS is set: \
             install the eBPF toolchain (`cargo xtask setup`)"
        );
        eprintln!("skipped: built without the eBPF object (run `cargo xtask setup`)");
        None
    }

    /// Needs: the eBPF toolchain at build time (CI has it); skipped with the stub object.
    #[test]
    fn embedded_programs_only_read() {
        let Some(obj) = object_or_skip() else {
            return;
        };
        let sections = audit(obj).unwrap();
        assert!(sections.iter().any(|s| s.section == "tp_btf/cgroup_mkdir"));
        assert!(sections.iter().all(|s| s.instructions > 0));
        // probe_read_kernel (113) is what the programs use to read.
        assert!(sections.iter().any(|s| s.helpers.contains(&113)));
    }

    #[test]
    fn a_write_helper_is_caught() {
        // A minimal ELF is hard to hand-build; check the instruction matcher on
        // the real object with one call patched to bpf_probe_write_user.
        let Some(obj) = object_or_skip() else {
            return;
        };
        let mut patched = obj.to_vec();
        let file = object::File::parse(obj).unwrap();
        let text = file
            .sections()
            .find(|s| s.name() == Ok("tp_btf/cgroup_mkdir"))
            .unwrap();
        let (start, len) = text.file_range().unwrap();
        let (start, len) = (start as usize, len as usize);
        let pos = patched[start..start + len]
            .chunks_exact(8)
            .position(|i| i[0] == 0x85 && i[1] >> 4 == 0)
            .unwrap();
        let at = start + pos * 8 + 4;
        patched[at..at + 4].copy_from_slice(&36i32.to_le_bytes());
        let err = audit(&patched).unwrap_err().to_string();
        assert!(err.contains("bpf_probe_write_user"), "{err}");
    }

    /// The old-kernel object, or `None` as [`object_or_skip`].
    fn perf_object_or_skip() -> Option<&'static [u8]> {
        object_or_skip()?;
        let obj = crate::probes::perf_object();
        // A prebuilt main object without a perf one (KMEM_TRACE_EBPF_OBJECT).
        (!obj.is_empty()).then_some(obj)
    }

    /// Needs: the eBPF toolchain at build time. The static floor check: no
    /// kernel older than 5.10 boots here, so this is what keeps the old-kernel
    /// object loadable on 4.18 (RHEL 8) and 5.4.
    #[test]
    fn old_kernel_object_fits_4_18() {
        let Some(obj) = perf_object_or_skip() else {
            return;
        };
        let progs = audit_old_kernel(obj).unwrap_or_else(|bad| panic!("{}", bad.join("\n")));
        for p in &progs {
            eprintln!(
                "{:<28} {:<46} {:>5} insns helpers {:?}",
                p.program, p.section, p.instructions, p.helpers
            );
        }
        for name in [
            "kt_raw_cgroup_mkdir",
            "kt_tpc_workqueue_start",
            "kt_kprobe_css_offline",
            "kt_kretprobe_css_alloc",
        ] {
            assert!(progs.iter().any(|p| p.program == name), "{name} missing");
        }
        // bpf_perf_event_output (25) and bpf_probe_read (4), not the ring buffer.
        assert!(progs.iter().any(|p| p.helpers.contains(&25)));
        assert!(progs.iter().all(|p| !p.helpers.contains(&131)));
    }

    /// The ring-buffer object fails the floor check (it is meant to: tp_btf,
    /// fentry, the census iterator, `bpf_probe_read_kernel`, `.rodata`).
    #[test]
    fn the_ring_buffer_object_is_not_for_old_kernels() {
        let Some(obj) = object_or_skip() else {
            return;
        };
        let bad = audit_old_kernel(obj).unwrap_err().join("\n");
        assert!(bad.contains("helper 113"), "{bad}");
        assert!(bad.contains(".rodata is global data"), "{bad}");
        assert!(bad.contains("tp_btf/cgroup_mkdir"), "{bad}");
    }

    /// A 5.5+ helper patched into the old-kernel object is caught.
    #[test]
    fn a_newer_helper_in_the_old_kernel_object_is_caught() {
        let Some(obj) = perf_object_or_skip() else {
            return;
        };
        let file = object::File::parse(obj).unwrap();
        let text = file
            .sections()
            .find(|s| s.name() == Ok("raw_tp/cgroup_mkdir"))
            .unwrap();
        let (start, len) = text.file_range().unwrap();
        let (start, len) = (start as usize, len as usize);
        let mut patched = obj.to_vec();
        let pos = patched[start..start + len]
            .chunks_exact(8)
            .position(|i| i[0] == 0x85 && i[1] >> 4 == 0 && i[4] == 4)
            .expect("a bpf_probe_read call");
        let at = start + pos * 8 + 4;
        patched[at..at + 4].copy_from_slice(&113i32.to_le_bytes());
        let bad = audit_old_kernel(&patched).unwrap_err().join("\n");
        assert!(
            bad.contains("kt_raw_cgroup_mkdir calls helper 113"),
            "{bad}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(audit(b"not an elf"), Err(AuditError::Elf(_))));
    }
}
