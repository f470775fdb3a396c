//! Helpers for kmem-trace's root integration tests: a per-run parent cgroup that
//! is always removed, processes spawned into test cgroups (never the test
//! runner itself), and the tracer binary run as a child process.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub mod browser;
pub mod cri;
pub mod lock;
pub mod pod;
pub mod runtimes;

/// True when the test may touch the kernel. Without root it prints why it is
/// skipped; with `KMEM_TRACE_REQUIRE_ROOT_TESTS=1` (CI) it fails instead.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_some() {
        panic!("{test} needs root and KMEM_TRACE_REQUIRE_ROOT_TESTS is set");
    }
    eprintln!("skipped {test}: needs root (cgroups and BPF)");
    false
}

/// Reads `sh`, `head` and their libraries into the page cache from the test
/// runner's own cgroup, once per test process. On a machine with cold caches
/// the first run inside a test cgroup would otherwise fault those file pages
/// in and have them charged to the test memcg (mm/filemap.c charges a new
/// page-cache page to the faulting task's memcg), so the memcg would stay
/// dying after the test removes its own pinning files. Seen on fresh CI runs.
fn warm_tools() -> Result<()> {
    static WARM: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    WARM.get_or_init(|| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("head -c 65536 /dev/zero > /dev/null")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("warming sh and head: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("warming sh and head failed: {}", out.status))
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The memory controller's cgroup root: cgroup v1 `memory`, else cgroup2 with memory.
pub fn memory_root() -> Result<PathBuf> {
    Ok(kmem_trace::cgroupfs::preferred_memory_hierarchy(Path::new("/"))?.mount)
}

/// A parent cgroup named for one test run, removed with everything below it
/// (processes killed by PID, tmpfs files deleted) when dropped, also on panic.
pub struct TestParent {
    pub path: PathBuf,
    /// Name of the parent directory (`kmem-trace-test-<tag>-<pid>-<n>`).
    pub name: String,
    pids: Vec<u32>,
    files: Vec<PathBuf>,
}

impl TestParent {
    pub fn new(tag: &str) -> Result<TestParent> {
        let root = memory_root()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("kmem-trace-test-{tag}-{}-{nanos}", std::process::id());
        let path = root.join(&name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        // cgroup v2: let children have their own memory controller.
        let st = path.join("cgroup.subtree_control");
        if st.exists() {
            fs::write(&st, "+memory").context("enabling +memory")?;
        }
        Ok(TestParent {
            path,
            name,
            pids: Vec::new(),
            files: Vec::new(),
        })
    }

    /// Creates a child cgroup `name` and returns its path.
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Remembers a file to delete on drop.
    pub fn track_file(&mut self, f: &Path) {
        self.files.push(f.to_path_buf());
    }

    /// Runs `script` with `sh` inside `cgroup` (the shell moves itself in first)
    /// and waits for it; the test runner never enters the cgroup.
    pub fn run_in(&mut self, cgroup: &Path, script: &str) -> Result<()> {
        warm_tools()?;
        let procs = cgroup.join("cgroup.procs");
        let full = format!("echo $$ > '{}' && {script}", procs.display());
        let child = Command::new("sh")
            .arg("-c")
            .arg(&full)
            .stdin(Stdio::null())
            .spawn()?;
        self.pids.push(child.id());
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("`{full}` failed: {}", out.status);
        }
        Ok(())
    }

    /// Removes a child cgroup (retrying while the kernel finishes with exited tasks).
    pub fn rmdir(&self, cgroup: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(cgroup) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| format!("rmdir {}", cgroup.display()))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn cleanup(&mut self) {
        for pid in self.pids.drain(..) {
            // Only processes this test spawned, by PID; most have exited already.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for f in self.files.drain(..) {
            let _ = fs::remove_file(&f);
        }
        remove_tree(&self.path);
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// rmdir a cgroup tree bottom-up, retrying briefly.
pub fn remove_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("warning: could not remove {}", path.display());
}

/// The kmem-trace binary, built on first use (`KMEM_TRACE_BIN` overrides).
pub fn kmem_trace_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KMEM_TRACE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "kmem-trace",
            "--bin",
            "kmem-trace",
        ])
        .status()
        .context("building kmem-trace")?;
    if !status.success() {
        bail!("building kmem-trace failed");
    }
    Ok(root.join("target/debug/kmem-trace"))
}

/// `kmem-trace` as a command: the binary of [`kmem_trace_bin`].
pub fn kmem_trace_cmd() -> Result<Command> {
    Ok(Command::new(kmem_trace_bin()?))
}

/// Runs `cmd` to completion: its stdout, or an error with its stderr when it
/// exits non-zero.
pub fn stdout_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// `kmem-trace census --json`, parsed; fails the test when the census fell
/// back to counts (no BPF iterator listing).
pub fn census_json() -> Value {
    let out = stdout_of(kmem_trace_cmd().unwrap().args(["census", "--json"])).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["source"], "bpf_iterator",
        "the census fell back to counts: {}",
        v["fallback"]
    );
    v
}

/// `kmem-trace zombies --json --db DB`, parsed.
pub fn zombies_json(db: &Path) -> Result<Value> {
    let out = stdout_of(
        kmem_trace_cmd()?
            .args(["zombies", "--json", "--db"])
            .arg(db),
    )?;
    serde_json::from_slice(&out).context("zombies --json printed no JSON")
}

/// The first entry of a `zombies --json` report whose path ends with `suffix`.
pub fn zombie_ending<'a>(report: &'a Value, suffix: &str) -> Option<&'a Value> {
    report["zombies"]
        .as_array()?
        .iter()
        .find(|z| z["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
}

/// A scratch directory (history database, runtime root, screenshots), created
/// here and removed with its contents when dropped, also on panic.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(path: PathBuf) -> Result<Scratch> {
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `kmem-trace` with its stdout collected.
pub struct Tracer {
    child: Option<Child>,
    stdout: Option<thread::JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl Tracer {
    /// Starts `kmem-trace ARGS` and waits for its "watching" line on stderr.
    pub fn start(args: &[&str]) -> Result<Tracer> {
        let bin = kmem_trace_bin()?;
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines lock").push(line);
            }
        });
        let err = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            child: Some(child),
            stdout: Some(stdout),
            lines,
            stderr_lines: rx,
            stderr: Vec::new(),
        };
        // Start-up of the debug binary costs about 2 s of CPU (most of it
        // parsing the kernel's BTF); on a 2-core machine also running VMs and
        // builds it took over 30 s of wall time. The bound is for a hang.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match t.stderr_lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let ready = line.contains("watching with");
                    t.stderr.push(line);
                    if ready {
                        return Ok(t);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = t.child.as_mut().and_then(|c| c.wait().ok());
                    bail!(
                        "kmem-trace exited before it was ready ({status:?}): {}",
                        t.stderr.join("\n")
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("kmem-trace not ready after 120s: {}", t.stderr.join("\n"));
            }
        }
    }

    /// The stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// The stdout lines so far, parsed as JSON (lines that are not JSON are skipped).
    pub fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends `signal`, waits for exit; returns (exit code, stdout).
    pub fn stop_with(&mut self, signal: i32) -> Result<(Option<i32>, String)> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait()?;
        if let Some(h) = self.stdout.take() {
            let _ = h.join();
        }
        let out = self.lines().join("\n");
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push(l);
        }
        Ok((status.code(), out))
    }

    pub fn stop(&mut self) -> Result<(Option<i32>, String)> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses JSON lines, failing on any line that is not one object.
pub fn json_lines(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// `GET path` on 127.0.0.1:port with extra header lines (HTTP/1.0: the body
/// ends with the connection): (status, head, body), or None if nothing answers.
pub fn http_get(port: u16, path: &str, headers: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    Some((code, head.to_string(), body.to_string()))
}
