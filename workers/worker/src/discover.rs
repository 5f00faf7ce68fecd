//! Finds model packages on disk: a directory of packages, or one package itself.

use std::path::{Path, PathBuf};

use protocol::host::ModelSpec;
use settings::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("model directory {0} does not exist")]
    Missing(PathBuf),
    #[error("no model packages in {0} (a package is a directory with model.rds or score.R)")]
    Empty(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Manifest(#[from] settings::ManifestError),
    #[error("two packages are both called '{name}' version {version:?}: {first} and {second}")]
    Duplicate { name: String, version: Option<String>, first: PathBuf, second: PathBuf },
}

/// A model package found on disk: what its hosts load, and its `model.toml` (which also
/// holds the model's batching and splitting overrides).
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub spec: ModelSpec,
    pub manifest: Manifest,
}

/// Whether `dir` holds a model package.
fn is_package(dir: &Path) -> bool {
    dir.join("model.rds").is_file() || dir.join("score.R").is_file()
}

/// The packages under `dir` (or `dir` itself when it is one), sorted by name.
pub fn discover(dir: &Path) -> Result<Vec<ModelPackage>, DiscoverError> {
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
            let path = entry.map_err(|source| DiscoverError::Read { path: dir.clone(), source })?.path();
            if path.is_dir() && is_package(&path) {
                package_dirs.push(path);
            }
        }
    }
    if package_dirs.is_empty() {
        return Err(DiscoverError::Empty(dir));
    }
    let mut packages: Vec<ModelPackage> = Vec::new();
    for package in package_dirs {
        let manifest = Manifest::read(&package)?;
        let name = manifest.name.clone().unwrap_or_else(|| {
            package.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
        });
        if let Some(other) = packages.iter().find(|p| p.spec.name == name && p.spec.version == manifest.version) {
            return Err(DiscoverError::Duplicate {
                name,
                version: manifest.version,
                first: other.spec.dir.clone(),
                second: package,
            });
        }
        let spec = ModelSpec {
            name,
            version: manifest.version.clone(),
            schema: manifest.schema(),
            predict_type: manifest.predict_type.clone(),
            dir: package,
        };
        packages.push(ModelPackage { spec, manifest });
    }
    packages.sort_by(|a, b| (&a.spec.name, &a.spec.version).cmp(&(&b.spec.name, &b.spec.version)));
    Ok(packages)
}
