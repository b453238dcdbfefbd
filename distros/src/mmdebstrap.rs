//! Building a root filesystem tarball with `mmdebstrap`, using the host's own
//! apt configuration (no mirror is passed), cached by a hash of the recipe.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::catalog::MmdebstrapRecipe;
use crate::compression::Compression;
use crate::download::{self, CachedFile};
use crate::progress::ProgressMode;

/// How many of mmdebstrap's last output lines an error carries.
const ERROR_TAIL_LINES: usize = 15;

/// Why mmdebstrap could not build the tarball.
#[derive(Debug, thiserror::Error)]
pub enum MmdebstrapError {
    /// The program is not installed.
    #[error("mmdebstrap is not installed; install it with `apt-get install mmdebstrap`")]
    Missing,
    /// Starting or waiting for it failed.
    #[error("cannot run mmdebstrap")]
    Run(#[source] io::Error),
    /// It ran and failed.
    #[error("mmdebstrap {suite} failed ({status}){}", tail_text(.output_tail))]
    Failed {
        /// The suite being built.
        suite: String,
        /// Its exit status.
        status: String,
        /// Its last output lines (empty when they went to the terminal).
        output_tail: Vec<String>,
    },
    /// Preparing or filling the cache failed.
    #[error("cannot write {path}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The last output line, which is where mmdebstrap says what went wrong;
/// the lines before it were logged as they came.
fn tail_text(lines: &[String]) -> String {
    match lines.last() {
        Some(last) => format!(": {}", last.trim()),
        None => String::new(),
    }
}

/// The cache key of a recipe: what mmdebstrap is asked to do, hashed.
pub(crate) fn recipe_key(recipe: &MmdebstrapRecipe) -> String {
    let mut include = recipe.include.clone();
    include.sort();
    include.dedup();
    let text = format!(
        "mmdebstrap v1\nsuite={}\nvariant={}\ninclude={}\n",
        recipe.suite,
        recipe.variant,
        include.join(",")
    );
    download::sha256_hex(text.as_bytes())
}

/// The command line that builds `recipe` into `output` (a `.tar` path).
pub(crate) fn command_line(recipe: &MmdebstrapRecipe, output: &Path) -> Vec<String> {
    let mut args = vec![format!("--variant={}", recipe.variant)];
    if !recipe.include.is_empty() {
        args.push(format!("--include={}", recipe.include.join(",")));
    }
    args.push(recipe.suite.clone());
    args.push(output.display().to_string());
    args
}

/// The tarball for `recipe` in `dir` (`<key>.tar`), built unless it is
/// cached or `refresh` asks for a rebuild.
pub(crate) fn build(
    recipe: &MmdebstrapRecipe,
    dir: &Path,
    refresh: bool,
    progress: ProgressMode,
) -> Result<CachedFile, MmdebstrapError> {
    let key = recipe_key(recipe);
    let path = dir.join(format!("{key}.tar"));
    if !refresh {
        if let Some(cached) = cached(recipe, dir) {
            tracing::info!(suite = %recipe.suite, path = %path.display(), "using cached mmdebstrap tarball");
            return Ok(cached);
        }
    }
    let cache_error = |path: &Path| {
        let path = path.to_owned();
        move |source| MmdebstrapError::Cache { path, source }
    };
    fs::create_dir_all(dir).map_err(cache_error(dir))?;
    // mmdebstrap picks the output format from the extension, so the
    // temporary name still ends in `.tar`.
    let temporary = dir.join(format!("{key}.partial.tar"));
    download::remove_quietly(&temporary);
    let args = command_line(recipe, &temporary);
    tracing::info!(args = %args.join(" "), "running mmdebstrap");
    let result = run("mmdebstrap", &args, &recipe.suite, progress);
    if let Err(err) = result {
        download::remove_quietly(&temporary);
        return Err(err);
    }
    fs::rename(&temporary, &path).map_err(cache_error(&path))?;
    Ok(CachedFile {
        path,
        sha256: key,
        compression: Compression::None,
    })
}

/// The tarball built earlier for `recipe` in `dir`, if any.
pub(crate) fn cached(recipe: &MmdebstrapRecipe, dir: &Path) -> Option<CachedFile> {
    let key = recipe_key(recipe);
    let path = dir.join(format!("{key}.tar"));
    path.is_file().then_some(CachedFile {
        path,
        sha256: key,
        compression: Compression::None,
    })
}

/// Runs `program` (mmdebstrap) with `args`, showing or logging its output.
fn run(
    program: &str,
    args: &[String],
    suite: &str,
    progress: ProgressMode,
) -> Result<(), MmdebstrapError> {
    let on_terminal = progress == ProgressMode::Auto && io::stderr().is_terminal();
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    if !on_terminal {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = command.spawn().map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => MmdebstrapError::Missing,
        _ => MmdebstrapError::Run(err),
    })?;
    let mut tail = VecDeque::new();
    if !on_terminal {
        // stdout is nearly silent; stderr carries the progress. Read stdout
        // on a thread so neither pipe can fill up and stall mmdebstrap.
        let stdout = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    tracing::info!(target: "mmdebstrap", "{line}");
                }
            })
        });
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                tracing::info!(target: "mmdebstrap", "{line}");
                tail.push_back(line);
                if tail.len() > ERROR_TAIL_LINES {
                    tail.pop_front();
                }
            }
        }
        if let Some(thread) = stdout {
            let _ = thread.join();
        }
    }
    let status = child.wait().map_err(MmdebstrapError::Run)?;
    if status.success() {
        Ok(())
    } else {
        Err(MmdebstrapError::Failed {
            suite: suite.to_owned(),
            status: status.to_string(),
            output_tail: tail.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(include: &[&str]) -> MmdebstrapRecipe {
        MmdebstrapRecipe {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn command_line_names_no_mirror() {
        let args = command_line(&recipe(&["sudo", "ca-certificates"]), Path::new("/c/x.tar"));

        assert_eq!(
            args,
            [
                "--variant=minbase",
                "--include=sudo,ca-certificates",
                "bookworm",
                "/c/x.tar"
            ]
        );
    }

    #[test]
    fn run_reports_missing_program_with_install_hint() {
        let err = run(
            "distroctl-test-no-such-program",
            &[],
            "bookworm",
            ProgressMode::Log,
        )
        .unwrap_err();

        assert!(matches!(err, MmdebstrapError::Missing));
        assert!(
            err.to_string().contains("apt-get install mmdebstrap"),
            "{err}"
        );
    }

    #[test]
    fn run_failure_carries_status_and_last_output_line() {
        let args = [
            "-c",
            "echo I: starting >&2; echo E: cannot find suite >&2; exit 25",
        ]
        .map(String::from);

        let err = run("sh", &args, "nosuch", ProgressMode::Log).unwrap_err();

        let MmdebstrapError::Failed { output_tail, .. } = &err else {
            panic!("expected a failure, got {err:?}");
        };
        assert_eq!(output_tail, &["I: starting", "E: cannot find suite"]);
        let message = err.to_string();
        assert!(message.contains("exit status: 25"), "{message}");
        assert!(message.ends_with(": E: cannot find suite"), "{message}");
    }

    #[test]
    fn recipe_key_ignores_include_order_but_not_content() {
        let a = recipe_key(&recipe(&["sudo", "ca-certificates"]));
        let b = recipe_key(&recipe(&["ca-certificates", "sudo"]));
        let c = recipe_key(&recipe(&["sudo"]));

        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
