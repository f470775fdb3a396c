//! Renders HTML in headless Chromium (Debian's `chromium`) and checks the
//! screenshot is a real page, not a blank one: decoded with the `png` crate,
//! counted for non-white pixels, spread of values, and pixels of given colours.
//! Also checks a page loads nothing from elsewhere.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// `chromium` on PATH. Missing: `None`, and in CI (`KMEM_TRACE_REQUIRE_ROOT_TESTS`)
/// a failure, since `cargo xtask test` installs it.
pub fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("chromium"))
            .find(|c| c.is_file())
    });
    if found.is_none() && std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_some() {
        panic!("chromium is not installed (cargo xtask test installs Debian's chromium)");
    }
    found
}

/// Screenshots `html` into `png` at `width`×`height` with a fresh profile,
/// no network services and no sandbox (root in CI). Waits at most 90 s.
pub fn screenshot(chromium: &Path, html: &Path, png: &Path, width: u32, height: u32) -> Result<()> {
    let profile = std::env::temp_dir().join(format!(
        "kmem-trace-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    ));
    fs::create_dir_all(&profile)?;
    let _ = fs::remove_file(png);
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", html.canonicalize()?.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting chromium")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            // Our own child, by PID.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = fs::remove_dir_all(&profile);
    match status {
        Some(s) if png.exists() => {
            if !s.success() {
                eprintln!("chromium exited {s} but wrote the screenshot");
            }
            Ok(())
        }
        Some(s) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("chromium exited {s} without a screenshot: {err}")
        }
        None => bail!("chromium did not finish in 90 s"),
    }
}

/// Headless Chromium keeps its window at least this wide (CSS px).
pub const MIN_WINDOW: u32 = 500;

/// A page that shows `html` in a `width`×`height` frame (its own viewport,
/// so media queries see `width`, also below [`MIN_WINDOW`]) and, once it
/// loaded, writes the framed document's scroll size into `data-size`. The
/// report itself stays script-free; this wrapper is the test's.
pub fn framed(html: &Path, width: u32, height: u32) -> Result<PathBuf> {
    let name = html
        .file_name()
        .context("file name")?
        .to_string_lossy()
        .to_string();
    let wrapper = html.with_file_name(format!("frame-{width}-{name}"));
    fs::write(
        &wrapper,
        format!(
            "<!DOCTYPE html><html><body style=\"margin:0;background:#888\"><iframe src=\"{name}\" \
             style=\"width:{width}px;height:{height}px;border:0;display:block;background:#fff\" \
             onload=\"var d=this.contentDocument.documentElement;\
             document.body.setAttribute('data-size',d.scrollWidth+'x'+d.scrollHeight)\"></iframe></body></html>"
        ),
    )?;
    Ok(wrapper)
}

/// The page's laid-out size in a `width`×`height` viewport: the framed
/// document's (scrollWidth, scrollHeight), read back from `--dump-dom`.
pub fn page_size(chromium: &Path, html: &Path, width: u32, height: u32) -> Result<(u64, u64)> {
    let wrapper = framed(html, width, height)?;
    let profile = std::env::temp_dir().join(format!(
        "kmem-trace-chromium-dom-{}-{width}",
        std::process::id()
    ));
    fs::create_dir_all(&profile)?;
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // The wrapper reads the framed file:// document.
            "--allow-file-access-from-files",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!(
            "--window-size={},{}",
            width.max(MIN_WINDOW) + 20,
            height + 20
        ))
        .arg(format!("file://{}", wrapper.canonicalize()?.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium")?;
    let mut out = child.stdout.take().context("chromium stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            // Our own child, by PID.
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = reader.join().unwrap_or_default();
    let _ = fs::remove_dir_all(&profile);
    let _ = fs::remove_file(&wrapper);
    let size = dom
        .split("data-size=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .with_context(|| {
            format!(
                "no measurement in the DOM chromium dumped ({} bytes)",
                dom.len()
            )
        })?;
    let (w, h) = size.split_once('x').context("size")?;
    Ok((w.parse()?, h.parse()?))
}

/// Fails unless `html` is one self-contained file: no script, stylesheet,
/// image, font or import it would load from elsewhere.
pub fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "src=\"//",
        "@import",
        "url(",
    ] {
        assert!(!lower.contains(bad), "external resource {bad:?}");
    }
}

/// What a screenshot shows.
#[derive(Debug)]
pub struct PngStats {
    pub width: u32,
    pub height: u32,
    /// Share of pixels that are not (near) white.
    pub non_white: f64,
    /// Variance of the grey level (0..255²): a flat image has none.
    pub variance: f64,
    /// Pixels within a tolerance of each colour asked for.
    pub colour_hits: Vec<usize>,
}

/// Decodes an 8-bit RGB or RGBA PNG and measures it.
pub fn png_stats(path: &Path, colours: &[[u8; 3]]) -> Result<PngStats> {
    let dec = png::Decoder::new(std::io::BufReader::new(fs::File::open(path)?));
    let mut reader = dec.read_info()?;
    let size = reader
        .output_buffer_size()
        .context("screenshot too large to decode")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("unexpected PNG colour type {other:?}"),
    };
    if info.bit_depth != png::BitDepth::Eight {
        bail!("unexpected PNG bit depth {:?}", info.bit_depth);
    }
    let px = &buf[..info.buffer_size()];
    let n = (info.width * info.height) as usize;
    let (mut non_white, mut sum, mut sum2) = (0usize, 0f64, 0f64);
    let mut hits = vec![0usize; colours.len()];
    for p in px.chunks(channels) {
        let (r, g, b) = (p[0], p[1], p[2]);
        if r < 240 || g < 240 || b < 240 {
            non_white += 1;
        }
        let grey = (r as f64 + g as f64 + b as f64) / 3.0;
        sum += grey;
        sum2 += grey * grey;
        for (i, c) in colours.iter().enumerate() {
            let close = |a: u8, b: u8| (a as i32 - b as i32).abs() <= 40;
            if close(r, c[0]) && close(g, c[1]) && close(b, c[2]) {
                hits[i] += 1;
            }
        }
    }
    let mean = sum / n as f64;
    Ok(PngStats {
        width: info.width,
        height: info.height,
        non_white: non_white as f64 / n as f64,
        variance: sum2 / n as f64 - mean * mean,
        colour_hits: hits,
    })
}

/// The report chart's series colours: live, dying, zombies (report/svg.rs).
pub const SERIES_COLOURS: [[u8; 3]; 3] =
    [[0x2e, 0x7d, 0x32], [0xef, 0x6c, 0x00], [0xc6, 0x28, 0x28]];
