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

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(audit(b"not an elf"), Err(AuditError::Elf(_))));
    }
}
