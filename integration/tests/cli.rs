//! The command-line surface that needs no workload: `criu check`, and the
//! binary answering as `criu` when started under that name.

use std::process::Command;

use stasis_integration::harness::{describe_exit, Env};

#[test]
fn criu_check_looks_good() {
    let Some(env) = Env::setup("criu_check_looks_good") else {
        return;
    };
    let run = env.stasis(&["criu", "check"]);
    run.expect_success("stasis criu check");
    assert!(
        run.stdout.contains("Looks good."),
        "`stasis criu check` should print \"Looks good.\": {}",
        run.describe()
    );
}

#[test]
fn criu_symlink_behaves_like_stasis_criu() {
    let Some(env) = Env::setup("criu_symlink_behaves_like_stasis_criu") else {
        return;
    };
    let link = env.path("criu");
    std::os::unix::fs::symlink(&env.bin, &link).expect("symlink criu");
    let out = Command::new(&link)
        .arg("check")
        .output()
        .expect("run criu symlink");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Looks good."),
        "`criu check` through a symlink {}: stdout {stdout:?} stderr {:?}",
        describe_exit(&out.status),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_subcommand_fails_with_one_line() {
    let Some(env) = Env::setup("unknown_subcommand_fails_with_one_line") else {
        return;
    };
    let run = env.stasis(&["criu", "no-such-command"]);
    assert!(!run.success(), "should fail: {}", run.describe());
    assert!(
        !run.stderr.trim().is_empty(),
        "should explain on stderr: {}",
        run.describe()
    );
}
