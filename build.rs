//! Records the git commit the gateway is built from, for `sessiongate_build_info`: the
//! `GIT_SHA` build environment (container builds have no `.git`), else git.
//!
//! The value is handed to the compiler as `BUILD_GIT_SHA`, not under a `SESSIONGATE_` name:
//! `cargo run` puts build-script variables in the binary's environment too, and the gateway
//! refuses `SESSIONGATE_*` variables it does not know.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_SHA");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let sha = std::env::var("GIT_SHA")
        .ok()
        .filter(|sha| !sha.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .and_then(|output| String::from_utf8(output.stdout).ok())
                .map(|sha| sha.trim().to_string())
                .filter(|sha| !sha.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=BUILD_GIT_SHA={sha}");
}
