//! The deploy artefacts' offline checks (`tests/deploy/*.py`), run with the pinned checkers
//! `deploy/setup.sh test` installs in `.rfleet/tools`: the Helm chart (lint, every rendered
//! object against the Kubernetes schemas of each AKS-supported version and KEDA's CRD
//! models, checkov, cross-checks with rfleet's own code and `rfleet config`) and the Bicep
//! template (parsed by pycep, with checkov). Each script exits non-zero naming every
//! failure; its output is shown when it does.

use std::path::PathBuf;
use std::process::Command;

use support::{binary, repo_root};

/// `<repo>/.rfleet/tools`, where `deploy/setup.sh test` puts the checkers.
fn tools() -> PathBuf {
    let tools = repo_root().join(".rfleet/tools");
    assert!(
        tools.join("venv/bin/python").is_file(),
        "{} has no checkers: run `deploy/setup.sh test`, which installs them",
        tools.display()
    );
    tools
}

/// Runs `tests/deploy/<script>` with the checkers' Python and `args`; fails with its output
/// unless it succeeds.
fn check(script: &str, args: &[&str]) {
    let tools = tools();
    let path = std::env::var("PATH").unwrap_or_default();
    let output = Command::new(tools.join("venv/bin/python"))
        .arg(repo_root().join("tests/deploy").join(script))
        .args(args)
        .current_dir(repo_root())
        // This build's rfleet resolves each pod's settings (`rfleet config`).
        .env("RFLEET_BIN", binary("rfleet"))
        // helm, kubectl, checkov and hadolint from the pinned tools, before anything else.
        .env("PATH", format!("{}:{}:{path}", tools.join("bin").display(), tools.join("venv/bin").display()))
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{script} failed ({}):\n{text}", output.status);
    println!("{text}");
}

#[test]
fn chart_passes_lint_schemas_checkov_and_cross_checks() {
    check("check_chart.py", &[]);
}

/// Each chart check is shown able to fail: the chart, copied, is broken once per check.
#[test]
fn chart_checks_catch_a_break_of_each_kind() {
    check("check_chart.py", &["--self-test"]);
}

/// AKS with the KEDA add-on, OIDC issuer and workload identity, AcrPull for the kubelet
/// identity, the Service Bus queues of the chart's model versions, Log Analytics and
/// Application Insights, the outputs the chart needs; checkov's Bicep checks; each
/// assertion seen failing once on a broken copy of the template.
#[test]
fn bicep_template() {
    check("check_bicep.py", &["--chart-values", "deploy/helm/rfleet/values/rabbitmq.yaml"]);
}
