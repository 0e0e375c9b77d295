//! Records the git commit the gateway is built from, for `sessiongate_build_info`: the
//! `SESSIONGATE_GIT_SHA` build environment (container builds have no `.git`), else git.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SESSIONGATE_GIT_SHA");
    if let Ok(sha) = std::env::var("SESSIONGATE_GIT_SHA") {
        println!("cargo:rustc-env=SESSIONGATE_GIT_SHA={sha}");
        return;
    }
    let sha = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|sha| sha.trim().to_string())
        .filter(|sha| !sha.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SESSIONGATE_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
