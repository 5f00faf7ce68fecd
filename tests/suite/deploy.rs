//! The deploy artefacts' offline checks (`tests/deploy/*.py`), run with the pinned checkers
//! `deploy/setup.sh test` installs in `.rfleet/tools`: the Helm chart (lint, every rendered
//! object against the Kubernetes schemas of each AKS-supported version and the CRD models
//! of KEDA and the Prometheus Operator, checkov, cross-checks with rfleet's own code and
//! `rfleet config`), the Bicep template (parsed by pycep, with checkov), and
//! deploy/observability's rules and dashboard (Debian's `promtool`, and every expression run
//! in a real `prometheus`). Each check exits non-zero naming every failure; its output is
//! shown when it does.

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

/// Runs Debian's `promtool` (deploy/setup.sh installs the prometheus package) in
/// deploy/observability; fails with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/observability"))
        .output()
        .unwrap_or_else(|e| {
            panic!("run promtool (Debian's prometheus package; deploy/setup.sh test installs it): {e}")
        });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed ({}):\n{text}", args.join(" "), output.status);
    println!("{text}");
}

#[test]
fn alerting_rules_parse() {
    promtool(&["check", "rules", "rules.yaml"]);
}

/// The rules' unit tests: every alert seen firing on the data it is for, and silent on
/// data it is not (`check_expressions.py` fails an alert without both).
#[test]
fn alerting_rules_pass_their_promtool_tests() {
    let mut tests: Vec<String> = std::fs::read_dir(repo_root().join("deploy/observability/tests"))
        .expect("read deploy/observability/tests")
        .map(|entry| entry.expect("a test file").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .map(|name| format!("tests/{name}"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "deploy/observability/tests has no promtool test file");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    promtool(&args);
}

/// Every PromQL expression of the rules and the Grafana dashboard returns data from a real
/// Prometheus scraping a sample of every metric docs/observability.md lists; the rules'
/// and dashboard's own checks; each check seen failing once on a broken copy.
#[test]
fn rules_and_dashboard_expressions_return_data_in_prometheus() {
    check("check_expressions.py", &["--self-test"]);
}
