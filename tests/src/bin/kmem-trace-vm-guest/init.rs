//! PID 1 of a test VM: mounts the pseudo filesystems, loads the kernel modules
//! the initramfs carries (`/modules/order`), mounts the data disk read-only, the
//! scratch disk read-write, and
//! the memory controller — cgroup v1 where the kernel has it, else cgroup v2
//! with `+memory` (Debian's 6.12 is built without CONFIG_MEMCG_V1, or
//! `kmt.cgroup=v2` asks for it) — and in the
//! end powers the VM off.

use std::{
    ffi::CString,
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where the data disk (`/dev/vda`, ext4, prepared by the host) is mounted.
pub const DISK: &str = "/disk";
/// Where the scratch disk (`/dev/vdc`, an empty ext4 the host made, attached
/// copy-on-write) is mounted read-write: the writeback pin's files.
pub const SCRATCH: &str = "/scratch";
/// A tmpfs for the tmpfs pin.
pub const SHM: &str = "/shm";

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src_c, target_c, fs_c, data_c) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fs_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t {fstype} {src} {target}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Everything before the scenario can run.
pub fn setup() -> Result<()> {
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    mount("tmpfs", "/tmp", "tmpfs", 0, "")?;
    mount("tmpfs", SHM, "tmpfs", 0, "")?;
    let st = Command::new("/bin/busybox")
        .args(["--install", "-s", "/bin"])
        .status()
        .context("running busybox --install")?;
    if !st.success() {
        bail!("busybox --install failed: {st}");
    }
    std::env::set_var("PATH", "/bin:/sbin");
    load_modules()?;
    mount_disk()?;
    mount_memory_controller()
}

/// `insmod` every module in `/modules/order` (dependencies first, as the host
/// wrote it from `modprobe --show-depends`).
fn load_modules() -> Result<()> {
    let Ok(order) = fs::read_to_string("/modules/order") else {
        return Ok(());
    };
    for m in order.lines().filter(|l| !l.trim().is_empty()) {
        let out = Command::new("/bin/busybox")
            .args(["insmod", m])
            .output()
            .with_context(|| format!("insmod {m}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        // Already built in, or hardware this VM lacks (ENODEV): not needed.
        let harmless = err.contains("File exists") || err.contains("No such device");
        if !out.status.success() && !harmless {
            bail!("insmod {m}: {}", err.trim());
        }
    }
    Ok(())
}

/// Waits up to `limit` for a device node to appear.
fn wait_dev(dev: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while !Path::new(dev).exists() {
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

fn mount_disk() -> Result<()> {
    if !wait_dev("/dev/vda", Duration::from_secs(10)) {
        bail!("no /dev/vda after 10s: is virtio_blk loaded and the disk attached?");
    }
    mount("/dev/vda", DISK, "ext4", libc::MS_RDONLY, "")?;
    // The scratch disk is optional (a VM started without it runs every
    // scenario but the writeback pin, which reports it missing).
    if wait_dev("/dev/vdc", Duration::from_secs(2)) {
        mount("/dev/vdc", SCRATCH, "ext4", 0, "")?;
    }
    Ok(())
}

fn mount_memory_controller() -> Result<()> {
    mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "")?;
    // `kmt.cgroup=v2` (vm-test --boot cgroup2): v2 even where v1 exists.
    let v2_asked = fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|a| a == "kmt.cgroup=v2");
    if !v2_asked && mount("cgroup", "/sys/fs/cgroup/memory", "cgroup", 0, "memory").is_ok() {
        return Ok(());
    }
    let _ = fs::remove_dir("/sys/fs/cgroup/memory");
    mount("cgroup2", "/sys/fs/cgroup/unified", "cgroup2", 0, "")?;
    fs::write("/sys/fs/cgroup/unified/cgroup.subtree_control", "+memory")
        .context("enabling +memory at the cgroup v2 root")
}

/// Syncs and powers off; qemu (`-no-reboot`) then exits.
pub fn poweroff() -> ! {
    // SAFETY: plain syscalls; PID 1 ending the machine is the point.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}
