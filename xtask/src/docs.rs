//! `cargo xtask completions [DIR]` and `cargo xtask man [DIR]`: shell
//! completions (clap_complete) and man pages (clap_mangen) generated from
//! kmem-trace's own command-line definition (`kmem_trace::cli::Cli`), so they
//! never drift from the binary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::{generate_to, Shell};
use kmem_trace::cli::Cli;

use crate::util;

#[derive(Args)]
pub struct DocsArgs {
    /// Output directory (default: target/completions or target/man).
    pub dir: Option<PathBuf>,
}

const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

/// Writes a completion script per shell into `dir`; returns their paths.
pub fn write_completions(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    SHELLS
        .iter()
        .map(|sh| {
            generate_to(*sh, &mut cmd, "kmem-trace", dir)
                .with_context(|| format!("writing {sh} completions to {}", dir.display()))
        })
        .collect()
}

/// Writes `kmem-trace.1` and one page per subcommand (`kmem-trace-watch.1`, ...).
pub fn write_man(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    Ok(pages)
}

pub fn completions(args: &DocsArgs) -> Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| util::root().join("target/completions"));
    for p in write_completions(&dir)? {
        println!("{}", p.display());
    }
    eprintln!(
        "install e.g. bash: cp {}/kmem-trace.bash /etc/bash_completion.d/kmem-trace; zsh: _kmem-trace into a dir on $fpath",
        dir.display()
    );
    Ok(())
}

pub fn man(args: &DocsArgs) -> Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| util::root().join("target/man"));
    for p in write_man(&dir)? {
        println!("{}", p.display());
    }
    eprintln!("read with: man -l {}/kmem-trace.1", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kmem-trace-docs-{tag}-{}", std::process::id()))
    }

    #[test]
    fn completions_and_man_pages_cover_every_subcommand() {
        let dir = temp("gen");
        let _ = std::fs::remove_dir_all(&dir);
        let scripts = write_completions(&dir.join("completions")).unwrap();
        assert_eq!(scripts.len(), SHELLS.len());
        let bash = std::fs::read_to_string(dir.join("completions/kmem-trace.bash")).unwrap();
        for sub in ["watch", "serve", "report", "zombies", "census", "doctor"] {
            assert!(bash.contains(sub), "bash completion lacks {sub}");
        }
        assert!(bash.contains("--listen-any") && bash.contains("--format"));
        let pages = write_man(&dir.join("man")).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "kmem-trace.1",
            "kmem-trace-watch.1",
            "kmem-trace-report.1",
            "kmem-trace-serve.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let main = std::fs::read_to_string(dir.join("man/kmem-trace.1")).unwrap();
        assert!(main.starts_with(".ie") || main.contains(".TH"), "{main}");
        assert!(main.contains("zombie"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
