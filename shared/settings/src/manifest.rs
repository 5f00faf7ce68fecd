//! `model.toml`: what a model package may declare about itself.

use std::path::Path;

use protocol::{ColumnSpec, Schema};
use serde::Deserialize;

/// A model package's optional `model.toml`. Every field is optional; what is missing is
/// inferred from the model (see README "Model packages").
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Defaults to the package directory's name.
    pub name: Option<String>,
    pub version: Option<String>,
    /// The `type` passed to `predict` when a request names none.
    pub predict_type: Option<String>,
    /// Declared input columns, in order; overrides inference.
    #[serde(default)]
    pub input: Vec<ColumnSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
}

impl Manifest {
    /// Reads `dir/model.toml`, or the empty manifest when there is none.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join("model.toml");
        if !path.exists() {
            return Ok(Manifest::default());
        }
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ManifestError::Parse { path: shown, source })
    }

    pub fn schema(&self) -> Option<Schema> {
        (!self.input.is_empty()).then(|| Schema { columns: self.input.clone() })
    }
}
