//! Finds model packages on disk: a directory of packages, or one package itself, with a
//! fingerprint of each (what a reload compares) and the packages that cannot be served.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use protocol::host::ModelSpec;
use protocol::LoadFailure;
use settings::Manifest;

/// What stops discovery as a whole. A package that is broken on its own is a
/// [`PackageFailure`] instead, so the others still serve.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("model directory {0} does not exist")]
    Missing(PathBuf),
    #[error("no model packages in {0} (a package is a directory with model.rds or score.R)")]
    Empty(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// A model package found on disk: what its hosts load, its `model.toml` (which also holds
/// the model's batching and splitting overrides), and its fingerprint.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub spec: ModelSpec,
    pub manifest: Manifest,
    pub fingerprint: Fingerprint,
}

/// What a package is on disk, as far as a reload cares: its directory, its `model.toml`'s
/// text, and the size and modification time of `model.rds` and `score.R`. Two equal
/// fingerprints are taken to be the same package (and not loaded again).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint {
    pub dir: PathBuf,
    manifest: Option<String>,
    files: Vec<(&'static str, u64, Option<SystemTime>)>,
}

impl Fingerprint {
    fn of(dir: &Path) -> Fingerprint {
        let manifest = std::fs::read_to_string(dir.join("model.toml")).ok();
        let files = ["model.rds", "score.R"]
            .into_iter()
            .filter_map(|file| {
                let meta = std::fs::metadata(dir.join(file)).ok()?;
                Some((file, meta.len(), meta.modified().ok()))
            })
            .collect();
        Fingerprint { dir: dir.to_path_buf(), manifest, files }
    }

    /// Whether the package on disk is still what this fingerprint saw. A host loads its
    /// packages from their directories, which may change at any moment (a package replaced
    /// in place): checked after a host has loaded them, this tells a host that holds these
    /// very packages from one that read newer files.
    pub fn still_on_disk(&self) -> bool {
        Fingerprint::of(&self.dir) == *self
    }
}

/// A package directory that cannot be served, and why (also for the announcement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFailure {
    pub dir: PathBuf,
    pub failure: LoadFailure,
}

/// The packages under a directory: those that can be loaded, sorted by name and version,
/// and those that cannot, sorted by directory.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    pub packages: Vec<ModelPackage>,
    pub failed: Vec<PackageFailure>,
}

impl Discovered {
    /// Gives every package whose `model.toml` names no `engine` the worker's default.
    pub fn engine_default(mut self, engine: protocol::Engine) -> Discovered {
        for package in &mut self.packages {
            package.spec.engine = package.manifest.engine.unwrap_or(engine);
        }
        self
    }

    /// The fingerprints of every package dir that could be loaded, sorted.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        let mut prints: Vec<Fingerprint> = self.packages.iter().map(|p| p.fingerprint.clone()).collect();
        prints.sort();
        prints
    }
}

/// Whether `dir` holds a model package.
fn is_package(dir: &Path) -> bool {
    dir.join("model.rds").is_file() || dir.join("score.R").is_file()
}

/// The packages under `dir` (or `dir` itself when it is one), hidden directories left
/// out. A package whose
/// `model.toml` is invalid, whose name holds `@` (which separates name and version in
/// queue names), or which shares its name and version with another is a failure, not an
/// error: only a missing directory, or one with no package at all, is.
pub fn discover(dir: &Path) -> Result<Discovered, DiscoverError> {
    if !dir.is_dir() {
        return Err(DiscoverError::Missing(dir.to_path_buf()));
    }
    let dir = dir.canonicalize().map_err(|source| DiscoverError::Read { path: dir.to_path_buf(), source })?;
    let mut package_dirs = Vec::new();
    if is_package(&dir) {
        package_dirs.push(dir.clone());
    } else {
        let entries = std::fs::read_dir(&dir).map_err(|source| DiscoverError::Read { path: dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| DiscoverError::Read { path: dir.clone(), source })?;
            // Hidden directories are someone's work in progress (a package being copied in
            // to be renamed into place) or Kubernetes' own (`..data` of a mounted volume).
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            if path.is_dir() && is_package(&path) {
                package_dirs.push(path);
            }
        }
    }
    if package_dirs.is_empty() {
        return Err(DiscoverError::Empty(dir));
    }
    package_dirs.sort();
    let mut discovered = Discovered::default();
    for package in package_dirs {
        let dir_name = package.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        let fail = |name: String, version: Option<String>, message: String| PackageFailure {
            dir: package.clone(),
            failure: LoadFailure { name, version, message },
        };
        // Read first, so that a package changing meanwhile is seen as changed next time.
        let fingerprint = Fingerprint::of(&package);
        let manifest = match Manifest::read(&package) {
            Ok(manifest) => manifest,
            Err(error) => {
                discovered.failed.push(fail(dir_name, None, error.to_string()));
                continue;
            }
        };
        let name = manifest.name.clone().unwrap_or(dir_name);
        if name.contains('@') {
            let message = format!("model name '{name}' holds '@', which separates name and version in queue names");
            discovered.failed.push(fail(name, manifest.version.clone(), message));
            continue;
        }
        let spec = ModelSpec {
            name,
            version: manifest.version.clone(),
            schema: manifest.schema(),
            predict_type: manifest.predict_type.clone(),
            dir: package.clone(),
            engine: manifest.engine.unwrap_or_default(),
            r_fallback: manifest.r_fallback,
        };
        discovered.packages.push(ModelPackage { spec, manifest, fingerprint });
    }
    // Two packages of one name and version: neither is served, since which one the user
    // meant cannot be told (and a reload must not flip between them).
    let packages = std::mem::take(&mut discovered.packages);
    let key = |p: &ModelPackage| (p.spec.name.clone(), p.spec.version.clone());
    for package in &packages {
        let twins: Vec<String> = packages
            .iter()
            .filter(|other| key(other) == key(package) && other.spec.dir != package.spec.dir)
            .map(|other| other.spec.dir.display().to_string())
            .collect();
        if twins.is_empty() {
            discovered.packages.push(package.clone());
        } else {
            let message = format!("{} is also {}", twins.join(", "), package.spec.model_ref());
            discovered.failed.push(PackageFailure {
                dir: package.spec.dir.clone(),
                failure: LoadFailure {
                    name: package.spec.name.clone(),
                    version: package.spec.version.clone(),
                    message,
                },
            });
        }
    }
    discovered.packages.sort_by(|a, b| (&a.spec.name, &a.spec.version).cmp(&(&b.spec.name, &b.spec.version)));
    discovered.failed.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(discovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes packages under a temp dir (`(dir, model.toml or None)`, each with a
    /// `model.rds` that is never read here), discovers them, and checks what loads
    /// (`name version`) and what fails (`dir: part of the message`).
    fn check(packages: &[(&str, Option<&str>)], loads: &[&str], fails: &[(&str, &str)]) {
        let root = tempfile::tempdir().unwrap();
        for (dir, manifest) in packages {
            let dir = root.path().join(dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("model.rds"), b"rds").unwrap();
            if let Some(manifest) = manifest {
                std::fs::write(dir.join("model.toml"), manifest).unwrap();
            }
        }
        let discovered = discover(root.path()).expect("a directory with packages");
        let loaded: Vec<String> = discovered.packages.iter().map(|p| p.spec.model_ref().to_string()).collect();
        assert_eq!(loaded, loads);
        assert_eq!(discovered.failed.len(), fails.len(), "{:?}", discovered.failed);
        for (failure, (dir, message)) in discovered.failed.iter().zip(fails) {
            assert_eq!(failure.dir.file_name().unwrap(), *dir);
            assert!(failure.failure.message.contains(message), "{:?} does not say {message:?}", failure.failure);
        }
    }

    #[test]
    fn broken_packages_are_failures_not_errors() {
        check(&[("a", None), ("b", Some("version = \"2\""))], &["a", "b version 2"], &[]);
        // A package being copied in (hidden until renamed into place) is not one yet.
        check(&[("a", None), (".a.partial", None)], &["a"], &[]);
        // An invalid model.toml, a name with '@' and twins fail; the rest load.
        check(
            &[
                ("good", None),
                ("bad_toml", Some("name = ")),
                ("unknown_key", Some("colour = \"red\"")),
                ("at", Some("name = \"rf@2\"")),
                ("twin1", Some("name = \"twin\"\nversion = \"1\"")),
                ("twin2", Some("name = \"twin\"\nversion = \"1\"")),
                ("twin_v2", Some("name = \"twin\"\nversion = \"2\"")),
            ],
            &["good", "twin version 2"],
            &[
                ("at", "holds '@'"),
                ("bad_toml", "invalid"),
                ("twin1", "twin2 is also twin version 1"),
                ("twin2", "twin1 is also twin version 1"),
                ("unknown_key", "colour"),
            ],
        );
    }

    #[test]
    fn a_directory_without_packages_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(discover(&root.path().join("nope")), Err(DiscoverError::Missing(_))));
        assert!(matches!(discover(root.path()), Err(DiscoverError::Empty(_))));
        // One package is a directory of one.
        std::fs::write(root.path().join("score.R"), b"predict_fn <- identity").unwrap();
        let discovered = discover(root.path()).unwrap();
        assert_eq!(discovered.packages.len(), 1);
    }

    /// A package's fingerprint changes with its model.toml and its files, not otherwise.
    #[test]
    fn fingerprints_follow_the_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("model.rds"), b"one").unwrap();
        let first = Fingerprint::of(root.path());
        assert_eq!(Fingerprint::of(root.path()), first);
        std::fs::write(root.path().join("model.toml"), b"version = \"2\"").unwrap();
        let with_manifest = Fingerprint::of(root.path());
        assert_ne!(with_manifest, first);
        std::fs::write(root.path().join("model.rds"), b"longer").unwrap();
        assert_ne!(Fingerprint::of(root.path()), with_manifest);
    }
}
