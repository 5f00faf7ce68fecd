//! `rfleet package`: model packages to a model image FROM the worker image.
//!
//! The packages are found as the worker finds them ([`worker::discover`]) and loaded in a
//! real R host, which refuses what would not serve and tells each model's classes. The R
//! packages the models need ([`needs`]: their classes, their R files, `--r-package`)
//! become Debian `r-cran-*` packages the image installs, unless R or the worker image
//! has them already; one Debian does not have is an error saying what to do. The build
//! context ([`context`]) is written to a directory of its own and built with `docker
//! build` when asked to and Docker is there.
//!
//! One image holds one model version: a worker consumes the queue of every package it
//! holds, while the Helm chart deploys one worker Deployment per model version, scaled
//! by KEDA on that version's queue alone.

mod context;
mod needs;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use protocol::host::ModelSpec;
use protocol::ModelRef;
use settings::Settings;
use worker::{discover, Host, Started};

use context::{copy_package, dockerfile, prepare_output, Image, ImageTag};
use needs::{is_package_name, needs_of, source_of, Need, Source};

/// The worker image of this rfleet version.
pub const DEFAULT_FROM: &str = concat!("rfleet-worker:", env!("CARGO_PKG_VERSION"));

/// Where contexts go unless `--output` says: one directory per image under it.
const DEFAULT_OUTPUT_ROOT: &str = "rfleet-package";

/// `rfleet package`'s flags.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct PackageArgs {
    /// A directory of model packages, or one package (a directory with model.rds or score.R,
    /// maybe model.toml): what the image serves, from /models.
    #[arg(long, value_name = "DIR")]
    pub models: PathBuf,
    /// The image to build, REGISTRY/NAME:VERSION (e.g. myacr.azurecr.io/iris:1.0.0); its tag
    /// should be the model's version (model.toml's `version`).
    #[arg(long, value_name = "REGISTRY/NAME:VERSION")]
    pub tag: String,
    /// The image to build FROM: the rfleet worker image, or a base image made from it that
    /// holds R packages Debian does not have.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_FROM)]
    pub from: String,
    /// Where to write the build context (Dockerfile and models/); default
    /// ./rfleet-package/<NAME>-<VERSION> from --tag. A context written before is replaced;
    /// any other existing, non-empty directory is refused.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// An R package the models need that rfleet cannot infer (repeatable): installed from
    /// Debian as r-cran-<lowercase name>.
    #[arg(long = "r-package", value_name = "PKG")]
    pub r_packages: Vec<String>,
    /// An R package the --from image already has although Debian bookworm does not package
    /// it (repeatable); the build checks that it loads.
    #[arg(long, value_name = "PKG")]
    pub provided: Vec<String>,
    /// Allow more than one model package in the image. The Helm chart wants one model version
    /// per image; this is for images run some other way.
    #[arg(long)]
    pub allow_multiple: bool,
    /// Write the build context only; do not run docker build.
    #[arg(long)]
    pub no_build: bool,
    /// The Docker client to build with.
    #[arg(long, value_name = "PATH", env = "DOCKER", default_value = "docker")]
    pub docker: PathBuf,
    /// `docker build --network` (e.g. `host` where the build's apt-get cannot reach Debian
    /// through Docker's own network).
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
}

const AFTER_HELP: &str = "\
The models are loaded in an R host first (rfleet-rhost beside rfleet, or workers.rhost_path):
a package that does not load is refused with R's error.

The R packages a model needs come from its classes (class(model) as R loaded it), from what
its R files (score.R and any other *.R in the package) load or call (library(x), require(x),
requireNamespace(\"x\"), loadNamespace(\"x\"), x::f) and from --r-package. Base R's
packages need nothing, nor do those the worker image installs (deploy/setup.sh's
R_PACKAGES, compiled in); the others are installed from Debian bookworm as r-cran-<name>.
A package Debian does not have is an error: build a base image FROM the worker image that
installs it, then pass --from <that image> --provided <name>.

The build context is self-contained: build it with `docker build -t TAG DIR` anywhere, or
`az acr build`. It is written before the build, so it is there when Docker is not.

Example:
  rfleet package --models models/iris --tag myacr.azurecr.io/iris:1.0.0
  docker push myacr.azurecr.io/iris:1.0.0";

/// One model as loaded, with what it needs and where each comes from.
struct Packaged {
    model: ModelRef,
    dir: PathBuf,
    r_class: Vec<String>,
    needs: Vec<(Need, Source)>,
}

/// Runs `rfleet package`.
pub fn run(args: &PackageArgs, settings: &Settings) -> anyhow::Result<()> {
    let tag = ImageTag::parse(&args.tag).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !args.from.is_empty() && !args.from.contains(char::is_whitespace),
        "invalid --from {:?}: an image reference has no spaces",
        args.from
    );
    for package in args.r_packages.iter().chain(&args.provided) {
        anyhow::ensure!(is_package_name(package), "{package:?} is not an R package name");
    }
    let packaged = load(args, &tag, settings)?;
    print_inference(&packaged);
    refuse_missing(&packaged, &args.from)?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_OUTPUT_ROOT).join(format!("{}-{}", tag.name(), tag.tag)));
    write_context(&packaged, &tag, &args.from, &output)?;
    println!("wrote {} (Dockerfile, models/)", output.display());
    if args.no_build {
        println!("build it with: docker build -t {tag} {}", output.display());
        return Ok(());
    }
    build(args, &tag, &output)
}

/// The packages under `--models`, loaded in an R host, with what each needs: refused
/// when one is broken, when R cannot load one, or when there are several (see
/// [`one_model_version`]).
fn load(args: &PackageArgs, tag: &ImageTag, settings: &Settings) -> anyhow::Result<Vec<Packaged>> {
    let discovered = discover(&args.models)?;
    if !discovered.failed.is_empty() {
        let failures: Vec<String> =
            discovered.failed.iter().map(|f| format!("  {}: {}", f.dir.display(), f.failure.message)).collect();
        anyhow::bail!("cannot package: some model packages are broken:\n{}", failures.join("\n"));
    }
    // Loaded for its classes only: no native forest is extracted into the package's directory.
    let specs: Vec<_> =
        discovered.packages.iter().map(|p| ModelSpec { engine: protocol::Engine::R, ..p.spec.clone() }).collect();
    one_model_version(&specs.iter().map(|s| s.model_ref()).collect::<Vec<_>>(), tag, args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let host_config = worker::pool_config(&settings.workers).host;
    let Started { host, models, failed, .. } = runtime
        .block_on(Host::start(&host_config, &specs))
        .with_context(|| format!("cannot load the models in an R host ({})", host_config.rhost_path.display()))?;
    runtime.block_on(host.stop());
    if !failed.is_empty() {
        let failures: Vec<String> = failed
            .iter()
            .map(|f| format!("  {}: {}", ModelRef { name: f.name.clone(), version: f.version.clone() }, f.message))
            .collect();
        anyhow::bail!("cannot package: R could not load some models:\n{}", failures.join("\n"));
    }
    let mut packaged = Vec::new();
    for spec in &specs {
        let model = spec.model_ref();
        let info = models
            .iter()
            .find(|m| m.name == model.name && m.version == model.version)
            .with_context(|| format!("the R host loaded no {model}, and did not say why"))?;
        let r_files = r_files(&spec.dir)?;
        let needs = needs_of(&info.r_class, &r_files, &args.r_packages)
            .into_iter()
            .map(|need| {
                let source = source_of(&need.package, &args.provided);
                (need, source)
            })
            .collect();
        packaged.push(Packaged { model, dir: spec.dir.clone(), r_class: info.r_class.clone(), needs });
    }
    Ok(packaged)
}

/// The R files of a package, as `(path inside the package, code)`: `score.R` first, then
/// every other `*.R` file in it (a `score.R` may `source()` them), sorted by path.
fn r_files(package: &Path) -> anyhow::Result<Vec<(String, String)>> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
            if path.file_name().is_some_and(|name| name == ".git") {
                continue;
            }
            if path.is_dir() {
                walk(&path, found)?;
            } else if path.extension().is_some_and(|ext| ext == "R" || ext == "r") {
                found.push(path);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(package, &mut paths)?;
    let score = package.join("score.R");
    paths.sort_by_key(|path| (*path != score, path.clone()));
    paths
        .into_iter()
        .map(|path| {
            let code = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let name = path.strip_prefix(package).unwrap_or(&path).display().to_string();
            Ok((name, code))
        })
        .collect()
}

/// Refuses R packages Debian bookworm does not have, naming each model, the reason, the
/// package, and what to do instead.
fn refuse_missing(packaged: &[Packaged], from: &str) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for p in packaged {
        for (need, source) in &p.needs {
            if let Source::Missing(debian) = source {
                lines.push(format!(
                    "  model {} ({}) needs the R package {}, which Debian bookworm does not package (no {debian})",
                    p.model, need.reason, need.package
                ));
                if !missing.contains(&need.package.as_str()) {
                    missing.push(&need.package);
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let quoted: Vec<String> = missing.iter().map(|p| format!("\"{p}\"")).collect();
    let provided: Vec<String> = missing.iter().map(|p| format!("--provided {p}")).collect();
    anyhow::bail!(
        "cannot package: R packages missing from Debian bookworm, the worker image's base:\n{}\n\
         build a base image FROM {from} that installs {} (e.g. RUN Rscript -e 'install.packages(c({}))' as root), \
         then run rfleet package again with --from <that image> {}",
        lines.join("\n"),
        missing.join(", "),
        quoted.join(", "),
        provided.join(" ")
    )
}

/// Writes the build context to `output`: the Dockerfile and the packages under `models/`.
fn write_context(packaged: &[Packaged], tag: &ImageTag, from: &str, output: &Path) -> anyhow::Result<()> {
    let mut install: Vec<String> = Vec::new();
    let mut check_loads: Vec<String> = Vec::new();
    for (need, source) in packaged.iter().flat_map(|p| &p.needs) {
        if let Source::Debian(debian) = source {
            install.push(debian.clone());
        }
        if *source != Source::Base {
            check_loads.push(need.package.clone());
        }
    }
    install.sort();
    install.dedup();
    check_loads.sort();
    check_loads.dedup();
    let models: Vec<String> = packaged
        .iter()
        .map(|p| match &p.model.version {
            Some(version) => format!("{}@{version}", p.model.name),
            None => p.model.name.clone(),
        })
        .collect();
    prepare_output(output)?;
    let image = Image { tag, from, install: &install, check_loads: &check_loads, models: &models };
    std::fs::write(output.join("Dockerfile"), dockerfile(&image))
        .with_context(|| format!("cannot write {}", output.join("Dockerfile").display()))?;
    let models_dir = output.join("models");
    std::fs::create_dir(&models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
    for p in packaged {
        let dir_name = p.dir.file_name().context("a model package directory has a name")?;
        copy_package(&p.dir, &models_dir.join(dir_name))?;
    }
    match install.is_empty() {
        true => println!("installs: nothing (R and the worker image have every R package the models need)"),
        false => println!("installs: {}", install.join(" ")),
    }
    Ok(())
}

/// Refuses more than one package unless `--allow-multiple`, and warns when the tag is
/// not the one model's version: a worker serves every package its image holds, so two
/// versions in one image would put one Deployment on two versions' queues.
fn one_model_version(models: &[ModelRef], tag: &ImageTag, args: &PackageArgs) -> anyhow::Result<()> {
    let listed: Vec<String> = models.iter().map(ModelRef::to_string).collect();
    if models.len() > 1 && !args.allow_multiple {
        let first = &models[0].name;
        let what = match models.iter().all(|m| &m.name == first) {
            true => format!("{} versions of model {first}", models.len()),
            false => format!("{} model packages", models.len()),
        };
        anyhow::bail!(
            "{} holds {what} ({}): each model version should be its own image, since the Helm chart deploys \
             one worker Deployment per model version and KEDA scales it on that version's queue, while a \
             worker serves every package in its image. Package each one on its own (--models DIR/<package>), \
             or pass --allow-multiple for an image run outside the chart",
            args.models.display(),
            listed.join(", ")
        );
    }
    if let [model] = models {
        match &model.version {
            Some(version) if *version != tag.tag => eprintln!(
                "warning: the tag {} is not the version of model {model}: the image of a model version is \
                 usually tagged with that version",
                tag.tag
            ),
            None => eprintln!(
                "warning: model {} has no version (model.toml's `version`): the Helm chart names workers and \
                 queues by version; consider version = \"{}\"",
                model.name, tag.tag
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Says, for each model, what it needs and why: class or line -> R package -> Debian.
fn print_inference(packaged: &[Packaged]) {
    for p in packaged {
        println!("model {} ({}): class {}", p.model, p.dir.display(), p.r_class.join(", "));
        if p.needs.is_empty() {
            println!("  needs no R package beyond R itself");
        }
        for (need, source) in &p.needs {
            println!("  {} -> R package {} -> {source}", need.reason, need.package);
        }
    }
}

/// `docker build -t TAG OUTPUT`, its output streamed as it comes.
fn build(args: &PackageArgs, tag: &ImageTag, output: &Path) -> anyhow::Result<()> {
    let mut command = Command::new(&args.docker);
    command.arg("build").arg("-t").arg(tag.to_string());
    if let Some(network) = &args.network {
        command.arg("--network").arg(network);
    }
    command.arg(output);
    println!("building {tag} with {}", args.docker.display());
    let status = match command.status() {
        Ok(status) => status,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "cannot build: no Docker client {} (set --docker or DOCKER). The build context is written: \
             build it where Docker is with `docker build -t {tag} {}`, or pass --no-build",
            args.docker.display(),
            output.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot run {}", args.docker.display())),
    };
    anyhow::ensure!(
        status.success(),
        "docker build of {tag} failed ({status}); the context is in {}",
        output.display()
    );
    println!("built {tag}");
    Ok(())
}
