//! The image users build (`docker build`, docker-compose) compiles what the Dockerfile
//! copies into its builder stage, nothing else: every file the workspace's manifests name
//! must be among it, or the build fails before compiling anything. No Docker engine runs
//! here, so the test rebuilds that context from the Dockerfile's `COPY` lines and asks
//! cargo to load the workspace from it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The lines of the first stage (up to the second `FROM`).
fn builder_stage(dockerfile: &str) -> impl Iterator<Item = &str> {
    dockerfile
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.starts_with("FROM "))
        .skip(1)
        .take_while(|line| !line.starts_with("FROM "))
}

/// Copies a file or a directory tree.
fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        fs::create_dir_all(to).expect("create a directory of the context");
        for entry in fs::read_dir(from).expect("read a copied directory") {
            let entry = entry.expect("directory entry");
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).expect("create a directory of the context");
        }
        fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// Where `COPY source dest` puts `source` under the build's working directory `context`:
/// into `dest` when it ends with `/`, else at `dest`.
fn destination(context: &Path, dest: &str, source: &str) -> PathBuf {
    let dest = context.join(dest.trim_start_matches("./"));
    if dest.to_string_lossy().ends_with('/') || dest == context {
        let name = Path::new(source).file_name().expect("a named source");
        dest.join(name)
    } else {
        dest
    }
}

#[test]
fn the_dockerfile_copies_everything_the_workspace_needs_into_the_build() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile");
    let context = std::env::temp_dir().join(format!("ot-docker-context-{}", std::process::id()));
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context).expect("a scratch directory");
    let mut copied = 0;
    for line in builder_stage(&dockerfile).filter_map(|line| line.strip_prefix("COPY ")) {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|word| !word.starts_with("--"))
            .collect();
        let Some((dest, sources)) = words.split_last() else {
            panic!("COPY without a destination: {line}");
        };
        for source in sources {
            copy(&root.join(source), &destination(&context, dest, source));
            copied += 1;
        }
    }
    assert!(copied > 0, "no COPY line in the Dockerfile's builder stage");
    let loaded = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(context.join("Cargo.toml"))
        .output()
        .expect("run cargo");
    let _ = fs::remove_dir_all(&context);
    assert!(
        loaded.status.success(),
        "cargo cannot load the workspace from what the Dockerfile copies:\n{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
}
