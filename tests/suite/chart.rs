//! The Helm chart (deploy/helm/rfleet), checked offline by tests/deploy/check_chart.py: lint,
//! every rendered object against the Kubernetes schemas of each AKS-supported version and
//! KEDA's CRD models, checkov, and cross-checks with rfleet's own code and `rfleet config`.

use std::process::{Command, Output};

use support::{binary, repo_root};

/// Runs the chart checks with `args`, with this build's `rfleet` resolving the settings.
fn check_chart(args: &[&str]) -> Output {
    let root = repo_root();
    let python = root.join(".rfleet/tools/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run deploy/setup.sh test", python.display());
    Command::new(&python)
        .arg(root.join("tests/deploy/check_chart.py"))
        .args(args)
        .env("RFLEET_BIN", binary("rfleet"))
        .current_dir(&root)
        .output()
        .expect("run tests/deploy/check_chart.py")
}

fn assert_passed(output: Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn chart_passes_lint_schemas_checkov_and_cross_checks() {
    assert_passed(check_chart(&[]), "the chart checks");
}

/// Each check is shown able to fail: the chart, copied, is broken once per check.
#[test]
fn chart_checks_catch_a_break_of_each_kind() {
    assert_passed(check_chart(&["--self-test"]), "the chart checks' self-test");
}
