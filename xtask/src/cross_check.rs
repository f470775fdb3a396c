//! The `cross` step of `cargo xtask test`: the arm64 build is what it claims
//! to be, without a kernel or an emulator. Its binaries are aarch64 ELF and
//! statically linked, and each architecture's eBPF objects read a kprobe's
//! `struct pt_regs` that architecture's way (`--cfg bpf_target_arch` reached
//! aya-ebpf): a program built for the wrong one loads and attaches fine and
//! then reads garbage registers, which only a real arm64 kernel would show.

use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, Context, Result};
use object::{
    elf,
    read::elf::{ElfFile64, FileHeader, ProgramHeader},
    Endianness, Object, ObjectSection, ObjectSymbol,
};

use crate::build::{self, Arch};

/// Runs the step: builds the arm64 binaries (skipped, saying why, when the
/// cross toolchain is absent) and checks them and both architectures' objects.
pub fn run(root: &Path) -> Result<()> {
    check_bpf_objects(root, Arch::Amd64)?;
    if let Some(why) = Arch::Arm64.missing_toolchain() {
        eprintln!("cross: skipped: {why}");
        return Ok(());
    }
    let (kmem_trace, guest) = build::static_binaries(root, Arch::Arm64)?;
    for bin in [&kmem_trace, &guest] {
        let data = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        check_binary(&data, Arch::Arm64).with_context(|| bin.display().to_string())?;
        eprintln!(
            "cross: {} is a static {} binary",
            bin.display(),
            Arch::Arm64
        );
    }
    check_bpf_objects(root, Arch::Arm64)
}

/// `data` is a 64-bit ELF executable for `arch` without a program
/// interpreter (`PT_INTERP`), i.e. statically linked.
pub fn check_binary(data: &[u8], arch: Arch) -> Result<()> {
    let header = elf::FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF")?;
    let endian = header.endian()?;
    let machine = header.e_machine(endian);
    if machine != arch.elf_machine() {
        bail!(
            "ELF machine {machine}, not {} ({})",
            arch.elf_machine(),
            arch.rust_arch()
        );
    }
    let dynamic = header
        .program_headers(endian, data)?
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
    if dynamic {
        bail!("dynamically linked (it has a program interpreter)");
    }
    Ok(())
}

/// What a program reads from its context: kprobe programs get `struct
/// pt_regs *`, so an argument or the return value is a fixed offset there.
struct Probe {
    program: &'static str,
    /// The only context offset the program may read, per architecture:
    /// x86_64 `di` (1st argument) is at 112 and `ax` (return value) at 80;
    /// arm64's `regs[0]` is both, at 0.
    amd64: u64,
    arm64: u64,
}

const PROBES: &[Probe] = &[
    Probe {
        program: "kt_kprobe_css_online",
        amd64: 112,
        arm64: 0,
    },
    Probe {
        program: "kt_kretprobe_css_alloc",
        amd64: 80,
        arm64: 0,
    },
];

/// Both eBPF objects (ring buffer and old-kernel) built for `arch` read
/// `pt_regs` at `arch`'s offsets.
pub fn check_bpf_objects(root: &Path, arch: Arch) -> Result<()> {
    for perf in [false, true] {
        let path = arch.bpf_object(root, perf);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (built by kmem-trace/build.rs with any {arch} build of kmem-trace)",
                path.display()
            )
        })?;
        for p in PROBES {
            let want = match arch {
                Arch::Amd64 => p.amd64,
                Arch::Arm64 => p.arm64,
            };
            let got = ctx_offsets(&data, p.program)
                .with_context(|| format!("{}: {}", path.display(), p.program))?;
            if got != BTreeSet::from([want]) {
                bail!(
                    "{}: {} reads pt_regs at offsets {got:?}, not {{{want}}} as on {arch}: \
                     its bpf_target_arch is not {}",
                    path.display(),
                    p.program,
                    arch.rust_arch()
                );
            }
        }
        eprintln!("cross: {} reads pt_regs the {arch} way", path.display());
    }
    Ok(())
}

/// The offsets of every load from the context pointer in `program`: r1 on
/// entry and the registers it is copied to (a linear pass; the programs
/// checked keep it in one callee-saved register).
fn ctx_offsets(object: &[u8], program: &str) -> Result<BTreeSet<u64>> {
    let file = ElfFile64::<Endianness>::parse(object).context("parsing the eBPF object")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(program))
        .context("no such program")?;
    let section = file.section_by_index(
        sym.section_index()
            .context("the program's symbol has no section")?,
    )?;
    let (start, size) = (sym.address() as usize, sym.size() as usize);
    let code = section
        .data()?
        .get(start..start + size)
        .context("the program's symbol is outside its section")?;
    Ok(ctx_loads(code))
}

/// [`ctx_offsets`] of one program's instructions.
fn ctx_loads(code: &[u8]) -> BTreeSet<u64> {
    const CLASS_LD: u8 = 0x00;
    const CLASS_LDX: u8 = 0x01;
    const CLASS_ALU: u8 = 0x04;
    const CLASS_ALU64: u8 = 0x07;
    const MODE_MEM: u8 = 0x60;
    const MOV64_X: u8 = 0xbf;
    const CALL: u8 = 0x85;
    const LD_IMM64: u8 = 0x18;
    let mut ctx = [false; 11];
    ctx[1] = true;
    let mut offsets = BTreeSet::new();
    let mut insns = code.chunks_exact(8);
    while let Some(i) = insns.next() {
        let (op, dst, src) = (i[0], usize::from(i[1] & 0xf), usize::from(i[1] >> 4));
        let off = i16::from_le_bytes([i[2], i[3]]);
        if dst > 10 || src > 10 {
            continue;
        }
        match op {
            MOV64_X => ctx[dst] = ctx[src],
            // Helper calls clobber r1-r5.
            CALL => ctx[1..=5].fill(false),
            LD_IMM64 => {
                insns.next();
                ctx[dst] = false;
            }
            _ => match op & 0x07 {
                CLASS_LDX => {
                    if op & 0xe0 == MODE_MEM && ctx[src] {
                        offsets.insert(off as u64);
                    }
                    ctx[dst] = false;
                }
                CLASS_LD | CLASS_ALU | CLASS_ALU64 => ctx[dst] = false,
                _ => {}
            },
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One instruction: opcode, dst, src, offset (imm 0).
    fn insn(op: u8, dst: u8, src: u8, off: i16) -> [u8; 8] {
        let o = off.to_le_bytes();
        [op, dst | (src << 4), o[0], o[1], 0, 0, 0, 0]
    }

    #[test]
    fn loads_through_the_context_and_its_copies_only() {
        let code: Vec<u8> = [
            insn(0xbf, 6, 1, 0),   // r6 = r1
            insn(0x79, 2, 1, 112), // r2 = *(u64 *)(r1 + 112)
            insn(0x85, 0, 0, 0),   // call: r1 clobbered
            insn(0x79, 3, 1, 8),   // not the context any more
            insn(0x79, 4, 6, 80),  // r4 = *(u64 *)(r6 + 80)
            insn(0x07, 6, 0, 0),   // r6 += imm: no longer the context
            insn(0x79, 5, 6, 0),
        ]
        .concat();
        assert_eq!(ctx_loads(&code), BTreeSet::from([112, 80]));
    }

    #[test]
    fn elf_machine_and_static_linking() {
        // This test binary: x86_64 (or whatever runs it), dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let host = if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        let other = if host == Arch::Amd64 {
            Arch::Arm64
        } else {
            Arch::Amd64
        };
        let err = check_binary(&me, host).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = check_binary(&me, other).unwrap_err().to_string();
        assert!(err.contains("ELF machine"), "{err}");
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            check_binary(&bb, host).unwrap();
        }
    }
}
