//! `model.toml`: what a model package may declare about itself.

use std::path::Path;

use protocol::message::SplitPolicy;
use protocol::Engine;
use protocol::{ColumnSpec, Schema};
use serde::Deserialize;

/// A model package's optional `model.toml`. Every field is optional; what is missing is
/// inferred from the model (see README "Model packages").
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Overrides `[workers] split` for this model (`auto`, `never`, `always`).
    pub split: Option<SplitPolicy>,
    /// Overrides `[workers] max_batch_rows`: e.g. 1 for a `predict_fn` whose answer for a
    /// row depends on the other rows of the call, which batching would change.
    pub max_batch_rows: Option<usize>,
    /// Overrides `[workers] max_batch_wait_ms`.
    pub max_batch_wait_ms: Option<u64>,
    /// Overrides `[workers] split_min_rows`.
    pub split_min_rows: Option<usize>,
    /// Which engine scores the model: `auto` (native once its self-check at load passed,
    /// else R), `r`, or `native`; unset, the worker's `[workers] engine` (`auto`).
    pub engine: Option<Engine>,
    /// Whether R keeps the model as the fallback of the native engine (the default). With
    /// `false` each R host checks the native forest against R at load and, if they agree
    /// bit for bit, lets go of the model: only the native engine serves it, and what would
    /// need R is refused. If they disagree, R keeps it.
    #[serde(default = "r_fallback_default")]
    pub r_fallback: bool,
    /// What the worker's metrics record of this model's answers.
    #[serde(default)]
    pub metrics: ManifestMetrics,
}

impl Default for Manifest {
    fn default() -> Manifest {
        Manifest {
            name: None,
            version: None,
            predict_type: None,
            input: Vec::new(),
            split: None,
            max_batch_rows: None,
            max_batch_wait_ms: None,
            split_min_rows: None,
            engine: None,
            r_fallback: true,
            metrics: ManifestMetrics::default(),
        }
    }
}

fn r_fallback_default() -> bool {
    true
}

/// `model.toml`'s `[metrics]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ManifestMetrics {
    /// The upper bounds of `rfleet_prediction_value`'s buckets for this model's numeric
    /// outputs, increasing and finite; unset: a symmetric log scale (±0.001 … ±1e6).
    #[serde(default, deserialize_with = "increasing_buckets")]
    pub prediction_buckets: Option<Vec<f64>>,
}

/// Bucket bounds must be finite, strictly increasing and at least one: Prometheus needs
/// them so, and a typo found at load beats a histogram that silently means nothing.
fn increasing_buckets<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<f64>>, D::Error> {
    let buckets = Vec::<f64>::deserialize(deserializer)?;
    if buckets.is_empty() {
        return Err(serde::de::Error::custom("prediction_buckets needs at least one bound"));
    }
    if let Some(bad) = buckets.iter().find(|b| !b.is_finite()) {
        return Err(serde::de::Error::custom(format!("prediction_buckets must be finite, not {bad}")));
    }
    if let Some(pair) = buckets.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(serde::de::Error::custom(format!(
            "prediction_buckets must increase, but {} comes after {}",
            pair[1], pair[0]
        )));
    }
    Ok(Some(buckets))
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
        let text =
            std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path: shown.clone(), source })?;
        toml::from_str(&text).map_err(|source| ManifestError::Parse { path: shown, source })
    }

    pub fn schema(&self) -> Option<Schema> {
        (!self.input.is_empty()).then(|| Schema { columns: self.input.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Manifest, &str>) {
        match (toml::from_str::<Manifest>(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "error {got} does not mention {want}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn throughput_overrides() {
        check("", Ok(Manifest::default()));
        check(
            "split = \"never\"\nmax_batch_rows = 64\nmax_batch_wait_ms = 5\nsplit_min_rows = 100\n",
            Ok(Manifest {
                split: Some(SplitPolicy::Never),
                max_batch_rows: Some(64),
                max_batch_wait_ms: Some(5),
                split_min_rows: Some(100),
                ..Manifest::default()
            }),
        );
        check("split = \"sometimes\"\n", Err("sometimes"));
        check(
            "[metrics]\nprediction_buckets = [0, 0.5, 1]\n",
            Ok(Manifest {
                metrics: ManifestMetrics { prediction_buckets: Some(vec![0.0, 0.5, 1.0]) },
                ..Manifest::default()
            }),
        );
        check("[metrics]\nprediction_buckets = [1, 0.5]\n", Err("must increase, but 0.5 comes after 1"));
        check("[metrics]\nprediction_buckets = [1, 1]\n", Err("must increase"));
        check("[metrics]\nprediction_buckets = []\n", Err("at least one bound"));
        check("[metrics]\nprediction_buckets = [0, inf]\n", Err("finite"));
        check("[metrics]\nbuckets = [1]\n", Err("unknown field `buckets`"));
        check("r_fallback = false\n", Ok(Manifest { r_fallback: false, ..Manifest::default() }));
        check("r_fallback = \"no\"\n", Err("invalid type"));
        check("max_batch = 3\n", Err("unknown field `max_batch`"));
    }
}
