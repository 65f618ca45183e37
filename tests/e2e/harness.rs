//! The harness itself: nothing the suite starts outlives it.

use std::process::Command;

use crate::common::*;

/// Run only by `children_die_with_the_test_process`, in a test process of its own: starts the
/// shared environment (held in a static, never dropped) and exits.
#[test]
#[ignore = "run by children_die_with_the_test_process in a process of its own"]
fn starts_shared_children_and_exits() {
    let Ok(path) = std::env::var("HARMONY_PROXY_TEST_PIDS") else { return };
    let env = shared();
    std::fs::write(path, format!("{} {}", env.mock.child.id(), env.proxy.child.id())).unwrap();
}

fn alive(pid: u32) -> bool {
    // A zombie has ended; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Regression: the shared proxy and mock lived in a `static OnceLock`, which Rust never drops,
/// so every `cargo test` left them running after the test binary exited.
#[test]
fn children_die_with_the_test_process() {
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "harness::starts_shared_children_and_exits", "--ignored", "--test-threads=1"])
        .env("HARMONY_PROXY_TEST_PIDS", &pids_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let pids: Vec<u32> = std::fs::read_to_string(&pids_file).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    assert!(eventually(10, || !pids.iter().any(|p| alive(*p))), "still running after the test process exited: {pids:?}");
}
