//! A model image's build context: the image tag it is for, its Dockerfile, and the model
//! packages copied under `models/`, self-contained so it builds anywhere (`docker build`,
//! `az acr build`) without rfleet.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// The first line of every Dockerfile `rfleet package` writes: how a context it may
/// replace is told from a directory it must not touch.
pub const DOCKERFILE_HEADER: &str = "# Written by `rfleet package`";

/// An image reference `[REGISTRY/]PATH:TAG` as `docker build -t` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTag {
    /// Everything before the tag, registry included (`myacr.azurecr.io/iris`).
    pub repository: String,
    /// The tag (`1.0.0`).
    pub tag: String,
}

impl ImageTag {
    /// Parses `REGISTRY/NAME:VERSION`. The tag is required (one image per model version);
    /// the repository path is lowercase, as Docker requires.
    pub fn parse(reference: &str) -> Result<ImageTag, String> {
        let fail = |why: &str| Err(format!("invalid --tag {reference:?}: {why} (expected REGISTRY/NAME:VERSION)"));
        if reference.contains('@') {
            return fail("a digest is not a tag");
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = reference[last_slash..].rfind(':').map(|i| i + last_slash) else {
            return fail("it names no version tag");
        };
        let (repository, tag) = (&reference[..colon], &reference[colon + 1..]);
        let tag_ok = tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return fail("a tag is letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`");
        }
        let components: Vec<&str> = repository.split('/').collect();
        // A first component with a dot or a port, or `localhost`, is a registry host.
        let has_registry = components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost");
        let path = if has_registry { &components[1..] } else { &components[..] };
        let component_ok = |c: &&str| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !path.iter().all(component_ok) {
            return fail("an image name is lowercase letters, digits and `._-` between slashes");
        }
        Ok(ImageTag { repository: repository.to_string(), tag: tag.to_string() })
    }

    /// The image's own name: the repository's last component (`iris`).
    pub fn name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }
}

impl std::fmt::Display for ImageTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// What the Dockerfile says.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    pub tag: &'a ImageTag,
    /// The worker image (or a base made from it) to build FROM.
    pub from: &'a str,
    /// `r-cran-*` packages to install from Debian, sorted.
    pub install: &'a [String],
    /// Every R package beyond base R the models need: checked to load in the image.
    pub check_loads: &'a [String],
    /// The models, as `name@version` (or `name`), for the labels.
    pub models: &'a [String],
}

/// A Dockerfile label value or an R string, quoted (`"` and `\` escaped).
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Dockerfile of a model image.
pub fn dockerfile(image: &Image<'_>) -> String {
    let mut out = String::new();
    let tag = image.tag;
    let _ = writeln!(out, "{DOCKERFILE_HEADER} {}: the model image {tag}.", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "# Build it from this directory: docker build -t {tag} .");
    let _ = writeln!(out, "FROM {}", image.from);
    if !image.install.is_empty() {
        out.push_str(concat!(
            "# R packages the models need that the worker image lacks, from Debian bookworm (its base);\n",
            "# like the worker image's own, their versions follow bookworm's point releases.\n",
            "USER 0\n",
            "# hadolint ignore=DL3008\n",
            "RUN apt-get update \\\n",
            "    && apt-get install -y --no-install-recommends \\\n",
        ));
        for package in image.install {
            let _ = writeln!(out, "        {package} \\");
        }
        out.push_str("    && rm -rf /var/lib/apt/lists/*\n");
    }
    out.push_str(concat!(
        "# The model packages, owned by root and readable by all: the worker (user 10001) reads\n",
        "# them and cannot change them.\n",
        "COPY models/ /models/\n",
        "USER 10001:10001\n",
    ));
    if !image.check_loads.is_empty() {
        // Exec form: no shell needed. A package the base image was thought to have but
        // lacks fails the build here, not the first host at run time.
        let packages: Vec<String> = image.check_loads.iter().map(|p| format!("'{p}'")).collect();
        let script = format!(
            "for (p in c({})) if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, ' is not in the image')",
            packages.join(", ")
        );
        out.push_str("# Every R package the models need loads, as the user the worker runs as.\n");
        let _ = writeln!(out, "RUN [\"Rscript\", \"-e\", {}]", quoted(&script));
    }
    let models = image.models.join(",");
    let labels = [
        ("org.opencontainers.image.title", tag.name().to_string()),
        ("org.opencontainers.image.version", tag.tag.clone()),
        ("org.opencontainers.image.description", format!("rfleet model image serving {}", image.models.join(", "))),
        ("org.opencontainers.image.base.name", image.from.to_string()),
        ("io.rfleet.models", models),
    ];
    let labels: Vec<String> = labels.iter().map(|(key, value)| format!("{key}={}", quoted(value))).collect();
    let _ = writeln!(out, "LABEL {}", labels.join(" \\\n      "));
    out
}

/// Prepares `output` for a new context: creates it, or empties it when it holds one
/// `rfleet package` wrote before; anything else there is refused, never deleted.
pub fn prepare_output(output: &Path) -> anyhow::Result<()> {
    if output.exists() {
        let is_ours =
            std::fs::read_to_string(output.join("Dockerfile")).is_ok_and(|text| text.starts_with(DOCKERFILE_HEADER));
        let is_empty = output.read_dir().is_ok_and(|mut entries| entries.next().is_none());
        anyhow::ensure!(
            is_ours || is_empty,
            "{} exists and is not a build context rfleet package wrote: choose another --output, or remove it",
            output.display()
        );
        if is_ours {
            std::fs::remove_dir_all(output).with_context(|| format!("cannot remove the old {}", output.display()))?;
        }
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))
}

/// Copies a package directory to `to`, files 0644 and directories 0755 whatever they were
/// (the worker runs as another user than whoever made them; `COPY` keeps the modes). A
/// symbolic link to a file is copied as the file; `.git` is left out.
pub fn copy_package(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    let entries = std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let link = std::fs::symlink_metadata(&source)?.file_type().is_symlink();
        let meta = std::fs::metadata(&source).with_context(|| format!("cannot read {}", source.display()))?;
        if meta.is_dir() {
            anyhow::ensure!(!link, "{} is a link to a directory: copy it into the package instead", source.display());
            copy_package(&source, &target)?;
        } else if meta.is_file() {
            std::fs::copy(&source, &target)
                .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        } else {
            anyhow::bail!("{} is neither a file nor a directory", source.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let check = |reference: &str, expected: Result<(&str, &str, &str), &str>| {
            let got = ImageTag::parse(reference);
            match expected {
                Ok((repository, tag, name)) => {
                    let got = got.unwrap_or_else(|e| panic!("{reference}: {e}"));
                    assert_eq!((got.repository.as_str(), got.tag.as_str(), got.name()), (repository, tag, name));
                    assert_eq!(got.to_string(), reference);
                }
                Err(part) => {
                    let error = got.expect_err(reference);
                    assert!(error.contains(part), "{reference}: {error}");
                }
            }
        };
        check("myacr.azurecr.io/iris:1.0.0", Ok(("myacr.azurecr.io/iris", "1.0.0", "iris")));
        check("localhost:5000/team/rf-reg:2", Ok(("localhost:5000/team/rf-reg", "2", "rf-reg")));
        check("iris:v1_rc", Ok(("iris", "v1_rc", "iris")));
        check("MyACR.azurecr.io/iris:1", Ok(("MyACR.azurecr.io/iris", "1", "iris")));
        check("localhost:5000/iris", Err("names no version tag"));
        check("iris", Err("names no version tag"));
        check("iris:1.0+build", Err("a tag is"));
        check("iris:.1", Err("a tag is"));
        check("Iris:1", Err("lowercase"));
        check("team//iris:1", Err("lowercase"));
        check("iris@sha256:abc", Err("digest"));
    }

    #[test]
    fn dockerfiles() {
        let tag = ImageTag::parse("acr.io/iris:1.0.0").unwrap();
        let (install, check_loads, models) = (
            vec!["r-cran-data.table".to_string(), "r-cran-zoo".to_string()],
            vec!["data.table".into(), "randomForest".into()],
            vec!["iris@1.0.0".to_string(), "\"odd\"".to_string()],
        );
        let image = Image {
            tag: &tag,
            from: "rfleet-worker:0.1.0",
            install: &install,
            check_loads: &check_loads,
            models: &models,
        };
        let text = dockerfile(&image);
        // One package a line, as given (sorted by the caller); the whole file's lines are
        // checked by tests/suite/package.rs.
        assert!(text.contains("        r-cran-data.table \\\n        r-cran-zoo \\\n    && rm -rf"), "{text}");
        assert!(text.contains(r#"RUN ["Rscript", "-e", "for (p in c('data.table', 'randomForest')) if"#), "{text}");
        assert!(text.contains(r#"io.rfleet.models="iris@1.0.0,\"odd\"""#), "{text}");
        // Nothing to install: no root, no apt.
        let image = Image { install: &[], ..image };
        let text = dockerfile(&image);
        assert!(!text.contains("USER 0") && !text.contains("apt-get"), "{text}");
        assert_eq!(quoted(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
