//! `rfleet package --no-build`: the build context of a model image, from fixture models
//! and packages R makes here, loaded in a real R host; the Dockerfile read line by line,
//! the packages copied, the refusals and their messages, and hadolint on what it writes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{binary, fixtures, repo_root};

/// What one `rfleet package` run did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `rfleet package` in `cwd` with `args`.
fn package(cwd: &Path, args: &[&str]) -> Run {
    let output = Command::new(binary("rfleet"))
        .arg("package")
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("DOCKER")
        .output()
        .expect("run rfleet package");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `rfleet package --no-build` on `models`, expecting success, and checks what it
/// says (`says`: lines of its output), the Dockerfile's instructions without comments
/// (`dockerfile`, every line but the labels), and that each package is copied whole and
/// readable. Returns the output directory.
fn check(work: &Path, models: &Path, args: &[&str], says: &[&str], dockerfile: &[&str]) -> PathBuf {
    let output = work.join(format!("context-{}", models.file_name().unwrap().to_string_lossy()));
    let mut all = vec!["--models", models.to_str().unwrap(), "--no-build", "--output", output.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = package(work, &all);
    assert!(run.success, "rfleet package {all:?} failed:\n{}{}", run.stdout, run.stderr);
    for line in says {
        assert!(run.stdout.lines().any(|l| l.trim() == *line), "output lacks {line:?}:\n{}", run.stdout);
    }
    let text = std::fs::read_to_string(output.join("Dockerfile")).unwrap();
    let instructions: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let labels = instructions.iter().position(|l| l.starts_with("LABEL ")).expect("a LABEL instruction");
    assert_eq!(instructions[..labels], *dockerfile, "Dockerfile:\n{text}");
    assert!(
        instructions.iter().rev().find(|l| l.starts_with("USER ")) == Some(&"USER 10001:10001"),
        "the image runs as 10001:\n{text}"
    );
    for package in packages_of(models) {
        same_files(&package, &output.join("models").join(package.file_name().unwrap()));
    }
    lint(&output.join("Dockerfile"));
    output
}

/// Every file under `from` is under `to` with the same bytes, readable by the worker.
fn same_files(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (source, copied) = (entry.path(), to.join(entry.file_name()));
        if source.is_dir() {
            same_files(&source, &copied);
            continue;
        }
        assert_eq!(std::fs::read(&source).unwrap(), std::fs::read(&copied).unwrap(), "{}", copied.display());
        let mode = std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{} is readable by the worker", copied.display());
    }
}

/// The package directories under `models`, or `models` itself when it is one.
fn packages_of(models: &Path) -> Vec<PathBuf> {
    if models.join("model.rds").is_file() || models.join("score.R").is_file() {
        return vec![models.to_path_buf()];
    }
    std::fs::read_dir(models).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect()
}

/// hadolint (from `deploy/setup.sh test`) finds nothing in a Dockerfile it wrote.
fn lint(dockerfile: &Path) {
    let hadolint = repo_root().join(".rfleet/tools/venv/bin/hadolint");
    assert!(hadolint.is_file(), "{} is missing: run deploy/setup.sh test", hadolint.display());
    let output = Command::new(&hadolint).args(["--failure-threshold", "info"]).arg(dockerfile).output().unwrap();
    assert!(
        output.status.success(),
        "hadolint on {}:\n{}{}",
        dockerfile.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The label line of a context's Dockerfile that starts with `key=`.
fn label(output: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(output.join("Dockerfile")).unwrap();
    let at = text.find(&format!("{key}=")).unwrap_or_else(|| panic!("no label {key}:\n{text}"));
    text[at..].lines().next().unwrap().trim_end_matches(" \\").to_string()
}

/// Makes packages with R: each `(dir, R code writing model.rds and maybe score.R in the
/// working directory, model.toml or "")`.
fn r_packages(root: &Path, packages: &[(&str, &str, &str)]) {
    for (dir, code, toml) in packages {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("Rscript").args(["-e", code]).current_dir(&dir).status().expect("run Rscript");
        assert!(status.success(), "Rscript for {}: {status}", dir.display());
        if !toml.is_empty() {
            std::fs::write(dir.join("model.toml"), toml).unwrap();
        }
    }
}

const WORKER: &str = concat!("FROM rfleet-worker:", env!("CARGO_PKG_VERSION"));

#[test]
fn contexts_of_fixture_models() {
    let work = tempfile::tempdir().unwrap();
    let models = fixtures().join("models");
    // randomForest: the worker image has it, so the image only adds the model.
    let rf = check(
        work.path(),
        &models.join("rf_reg"),
        &["--tag", "acr.example.io/rf-reg:1"],
        &["class randomForest.formula -> R package randomForest -> r-cran-randomforest, in the worker image"],
        &[
            WORKER,
            "COPY models/ /models/",
            "USER 10001:10001",
            r#"RUN ["Rscript", "-e", "for (p in c('randomForest')) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')"]"#,
        ],
    );
    assert_eq!(label(&rf, "org.opencontainers.image.title"), r#"org.opencontainers.image.title="rf-reg""#);
    assert_eq!(label(&rf, "io.rfleet.models"), r#"io.rfleet.models="rf_reg""#);
    // lm needs base R only; an extra package from Debian is installed as root; the tag is
    // the model's version.
    let lm = check(
        work.path(),
        &models.join("lm"),
        &["--tag", "acr.example.io/team/lm:1.0.0", "--r-package", "data.table", "--from", "my-worker:2"],
        &[
            "class lm -> R package stats -> base R, nothing to install",
            "--r-package -> R package data.table -> r-cran-data.table, installed from Debian bookworm",
            "installs: r-cran-data.table",
        ],
        &[
            "FROM my-worker:2",
            "USER 0",
            "RUN apt-get update \\",
            "    && apt-get install -y --no-install-recommends \\",
            "        r-cran-data.table \\",
            "    && rm -rf /var/lib/apt/lists/*",
            "COPY models/ /models/",
            "USER 10001:10001",
            r#"RUN ["Rscript", "-e", "for (p in c('data.table')) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')"]"#,
        ],
    );
    assert_eq!(label(&lm, "io.rfleet.models"), r#"io.rfleet.models="lm@1.0.0""#);
    assert_eq!(label(&lm, "org.opencontainers.image.version"), r#"org.opencontainers.image.version="1.0.0""#);
    assert_eq!(label(&lm, "org.opencontainers.image.base.name"), r#"org.opencontainers.image.base.name="my-worker:2""#);
    // An Azure ML entry script: jsonlite from its `jsonlite::fromJSON`.
    check(
        work.path(),
        &models.join("azureml"),
        &["--tag", "acr.example.io/azureml:1"],
        &["score.R:4 jsonlite::fromJSON -> R package jsonlite -> r-cran-jsonlite, in the worker image"],
        &[
            WORKER,
            "COPY models/ /models/",
            "USER 10001:10001",
            r#"RUN ["Rscript", "-e", "for (p in c('jsonlite')) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')"]"#,
        ],
    );
}

#[test]
fn score_scripts_and_debian() {
    let work = tempfile::tempdir().unwrap();
    r_packages(
        work.path(),
        &[(
            "glmnet_script",
            r##"saveRDS(lm(mpg ~ wt, mtcars), "model.rds")
           writeLines(c("library(glmnet)  # library(xgboost) is only a comment",
                        "predict_fn <- function(model, newdata) survival::Surv(predict(model, newdata))"), "score.R")
           dir.create("R")
           writeLines(c("# sourced by nobody, read all the same", "requireNamespace('zoo')"), "R/helpers.R")"##,
            "name = \"cars\"\nversion = \"2\"\n",
        )],
    );
    let dir = work.path().join("glmnet_script");
    let first = format!("model cars version 2 ({}): class lm", dir.canonicalize().unwrap().display());
    let output = check(
        work.path(),
        &dir,
        &["--tag", "acr.example.io/cars:2"],
        &[
            first.as_str(),
            "score.R:1 library(glmnet) -> R package glmnet -> r-cran-glmnet, in the worker image",
            "score.R:2 survival::Surv -> R package survival -> r-cran-survival, installed from Debian bookworm",
            "R/helpers.R:2 requireNamespace(\"zoo\") -> R package zoo -> r-cran-zoo, installed from Debian bookworm",
            "installs: r-cran-survival r-cran-zoo",
        ],
        &[
            WORKER,
            "USER 0",
            "RUN apt-get update \\",
            "    && apt-get install -y --no-install-recommends \\",
            "        r-cran-survival \\",
            "        r-cran-zoo \\",
            "    && rm -rf /var/lib/apt/lists/*",
            "COPY models/ /models/",
            "USER 10001:10001",
            r#"RUN ["Rscript", "-e", "for (p in c('glmnet', 'survival', 'zoo')) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')"]"#,
        ],
    );
    assert!(output.join("models/glmnet_script/R/helpers.R").is_file());
}

#[test]
fn refusals_and_warnings() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    r_packages(
        root,
        &[
            (
                "boost",
                r#"saveRDS(structure(list(trees = 1), class = "xgb.Booster"), "model.rds")"#,
                "name = \"boost\"\nversion = \"3\"\n",
            ),
            ("broken", r#"writeLines("stop('this package is broken on purpose')", "score.R")"#, ""),
        ],
    );
    let refused = |args: &[&str], needles: &[&str]| {
        let run = package(root, args);
        assert!(!run.success, "rfleet package {args:?} succeeded:\n{}", run.stdout);
        for needle in needles {
            assert!(run.stderr.contains(needle), "rfleet package {args:?}: no {needle:?} in:\n{}", run.stderr);
        }
    };
    let boost = root.join("boost");
    let boost = boost.to_str().unwrap();
    // A class whose package Debian does not have: named with the model, class, package
    // and what to do; no context is written.
    refused(&["--models", boost, "--tag", "acr.example.io/boost:3", "--no-build"], &[
        "model boost version 3 (class xgb.Booster) needs the R package xgboost, which Debian bookworm does not package (no r-cran-xgboost)",
        "build a base image FROM rfleet-worker:",
        "--from <that image> --provided xgboost",
    ]);
    assert!(!root.join("rfleet-package").exists(), "nothing written when refused");
    // ... which is then what the --from image provides.
    check(
        root,
        &root.join("boost"),
        &["--tag", "acr.example.io/boost:3", "--from", "my-base:1", "--provided", "xgboost"],
        &["class xgb.Booster -> R package xgboost -> provided by the --from image (--provided)"],
        &[
            "FROM my-base:1",
            "COPY models/ /models/",
            "USER 10001:10001",
            r#"RUN ["Rscript", "-e", "for (p in c('xgboost')) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')"]"#,
        ],
    );
    // A package R cannot load: R's own message.
    refused(
        &["--models", root.join("broken").to_str().unwrap(), "--tag", "x:1", "--no-build"],
        &["R could not load some models", "broken", "this package is broken on purpose"],
    );
    // Several versions of one model: one image each.
    let versions = fixtures().join("versions");
    let versions = versions.to_str().unwrap();
    refused(
        &["--models", versions, "--tag", "acr.example.io/rf-reg:1", "--no-build"],
        &[
            "holds 3 versions of model rf_reg (rf_reg version 1, rf_reg version 2, rf_reg version 3)",
            "each model version should be its own image",
            "--allow-multiple",
        ],
    );
    let several = root.join("several");
    let run = package(
        root,
        &[
            "--models",
            versions,
            "--tag",
            "rf-reg:all",
            "--no-build",
            "--allow-multiple",
            "--output",
            several.to_str().unwrap(),
        ],
    );
    assert!(run.success, "{}", run.stderr);
    for v in 1..=3 {
        assert!(several.join(format!("models/rf_reg_v{v}/model.rds")).is_file());
    }
    assert_eq!(label(&several, "io.rfleet.models"), r#"io.rfleet.models="rf_reg@1,rf_reg@2,rf_reg@3""#);
    // A tag that is not the model's version: a warning, and the default output directory.
    let v2 = fixtures().join("versions/rf_reg_v2");
    let run = package(root, &["--models", v2.to_str().unwrap(), "--tag", "acr.example.io/rf-reg:7", "--no-build"]);
    assert!(run.success, "{}", run.stderr);
    assert!(run.stderr.contains("warning: the tag 7 is not the version of model rf_reg version 2"), "{}", run.stderr);
    assert!(run.stdout.contains("wrote rfleet-package/rf-reg-7"), "{}", run.stdout);
    assert!(root.join("rfleet-package/rf-reg-7/models/rf_reg_v2/model.toml").is_file());
    // Written again over its own context, but never over another directory.
    let again = package(root, &["--models", v2.to_str().unwrap(), "--tag", "acr.example.io/rf-reg:7", "--no-build"]);
    assert!(again.success, "{}", again.stderr);
    let other = root.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    refused(
        &["--models", v2.to_str().unwrap(), "--tag", "rf-reg:2", "--no-build", "--output", other.to_str().unwrap()],
        &["is not a build context rfleet package wrote"],
    );
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");
    // Tags and names checked before R starts.
    refused(
        &["--models", v2.to_str().unwrap(), "--tag", "acr.example.io/rf-reg", "--no-build"],
        &["names no version tag"],
    );
    refused(&["--models", v2.to_str().unwrap(), "--tag", "RF:2", "--no-build"], &["lowercase"]);
    refused(
        &["--models", v2.to_str().unwrap(), "--tag", "rf:2", "--r-package", "not a name", "--no-build"],
        &["\"not a name\" is not an R package name"],
    );
    // No Docker client: the context is written, and the error says how to build it.
    let out = root.join("nodocker");
    refused(
        &[
            "--models",
            v2.to_str().unwrap(),
            "--tag",
            "rf-reg:2",
            "--docker",
            "/nonexistent/docker",
            "--output",
            out.to_str().unwrap(),
        ],
        &["no Docker client /nonexistent/docker", &format!("docker build -t rf-reg:2 {}", out.display())],
    );
    assert!(out.join("Dockerfile").is_file());
}

#[test]
fn help_names_every_flag() {
    let output = Command::new(binary("rfleet")).args(["package", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--models",
        "--tag",
        "--from",
        "--output",
        "--r-package",
        "--provided",
        "--allow-multiple",
        "--no-build",
        "--docker",
        "--network",
        "[env: DOCKER",
        concat!("rfleet-worker:", env!("CARGO_PKG_VERSION")),
        "r-cran-<name>",
    ] {
        assert!(help.contains(flag), "`rfleet package --help` does not mention {flag}:\n{help}");
    }
}
