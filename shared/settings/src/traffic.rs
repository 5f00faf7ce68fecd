//! The traffic file (`models.traffic_file`): how a dispatcher splits a model's unpinned
//! requests between its versions, and which share it mirrors to a shadow version.
//!
//! ```toml
//! [rf_reg]
//! weights = { "1" = 90, "2" = 10 }            # blue/green, canary
//! mirror = { version = "3", percent = 10 }    # shadow traffic
//! ```
//!
//! One table per model, both keys optional. Unknown keys are an error, as everywhere in
//! the settings, and every error names the model and the key. The dispatcher re-reads the
//! file when its contents change; an invalid file keeps the last good one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The traffic file's contents: the models it names, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Traffic {
    pub models: BTreeMap<String, ModelTraffic>,
}

/// One model's table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ModelTraffic {
    /// Unpinned requests go to these versions in proportion to their weights (among those
    /// with live R hosts); `None`: by the default rule (in proportion to live hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
    /// A copy of a share of unpinned requests goes to a shadow version, whose answers are
    /// compared with the primary's and never returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// `mirror = { version = "3", percent = 10 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    pub version: String,
    /// 0..=100: the share of unpinned requests copied.
    pub percent: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("cannot read the traffic file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid traffic file {path}: {source}")]
    Syntax { path: String, source: toml::de::Error },
    #[error("invalid traffic file {path}: [{model}] {message}")]
    Model { path: String, model: String, message: String },
}

/// A model's table as written, checked by [`ModelTraffic::from_raw`]. Integers are read
/// as TOML's own `i64` so that a negative weight gets this module's message, not serde's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of `weights` and `mirror`")]
struct RawModel {
    weights: Option<BTreeMap<String, i64>>,
    mirror: Option<RawMirror>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    version: String,
    percent: i64,
}

impl Traffic {
    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<Traffic, TrafficError> {
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| TrafficError::Read { path: shown.clone(), source })?;
        Traffic::parse(&text, &shown)
    }

    /// Parses and checks a traffic file's text; `path` is only for the messages.
    pub fn parse(text: &str, path: &str) -> Result<Traffic, TrafficError> {
        let tables: BTreeMap<String, toml::Value> =
            toml::from_str(text).map_err(|source| TrafficError::Syntax { path: path.to_string(), source })?;
        let mut models = BTreeMap::new();
        for (model, table) in tables {
            let error = |message: String| TrafficError::Model { path: path.to_string(), model: model.clone(), message };
            // toml's messages put the key on a line of its own.
            let raw = RawModel::deserialize(table).map_err(|e| error(e.to_string().trim_end().replace('\n', " ")))?;
            let traffic = ModelTraffic::from_raw(raw).map_err(error)?;
            models.insert(model, traffic);
        }
        Ok(Traffic { models })
    }

    /// The table of the model called `name`, if the file has one.
    pub fn model(&self, name: &str) -> Option<&ModelTraffic> {
        self.models.get(name)
    }
}

impl ModelTraffic {
    fn from_raw(raw: RawModel) -> Result<ModelTraffic, String> {
        let weights = match raw.weights {
            None => None,
            Some(raw) => {
                let mut weights = BTreeMap::new();
                for (version, weight) in raw {
                    if version.is_empty() {
                        return Err("weights: a version is empty".into());
                    }
                    let weight = u32::try_from(weight).map_err(|_| {
                        format!("weights.\"{version}\": {weight} is not a whole number from 0 to {}", u32::MAX)
                    })?;
                    weights.insert(version, weight);
                }
                if weights.values().all(|w| *w == 0) {
                    return Err("weights: at least one version needs a positive weight".into());
                }
                Some(weights)
            }
        };
        let mirror = match raw.mirror {
            None => None,
            Some(RawMirror { version, percent }) => {
                if version.is_empty() {
                    return Err("mirror.version is empty".into());
                }
                let percent = u8::try_from(percent)
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("mirror.percent: {percent} is not a whole number from 0 to 100"))?;
                Some(Mirror { version, percent })
            }
        };
        Ok(ModelTraffic { weights, mirror })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Traffic, &str>) {
        match (Traffic::parse(text, "traffic.toml"), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(got), Err(want)) => assert_eq!(got.to_string(), want, "{text}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    /// A model's table as (name, weights by version, mirror version and percent).
    type Table<'a> = (&'a str, Option<&'a [(&'a str, u32)]>, Option<(&'a str, u8)>);

    fn traffic(models: &[Table]) -> Traffic {
        let models = models
            .iter()
            .map(|(name, weights, mirror)| {
                let weights = weights.map(|w| w.iter().map(|(v, w)| (v.to_string(), *w)).collect());
                let mirror = mirror.map(|(version, percent)| Mirror { version: version.into(), percent });
                (name.to_string(), ModelTraffic { weights, mirror })
            })
            .collect();
        Traffic { models }
    }

    #[test]
    fn traffic_files() {
        check("", Ok(Traffic::default()));
        check(
            "[rf_reg]\nweights = { \"1\" = 90, \"2\" = 10 }\nmirror = { version = \"3\", percent = 10 }\n",
            Ok(traffic(&[("rf_reg", Some(&[("1", 90), ("2", 10)]), Some(("3", 10)))])),
        );
        // Bare keys are versions too; a zero weight is allowed beside a positive one.
        check(
            "[a]\nweights = { 1 = 0, 2 = 1 }\n[b]\nmirror = { version = \"2\", percent = 100 }\n[c]\n",
            Ok(traffic(&[("a", Some(&[("1", 0), ("2", 1)]), None), ("b", None, Some(("2", 100))), ("c", None, None)])),
        );
        check(
            "[rf_reg]\nwieghts = { 1 = 1 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] unknown field `wieghts`, expected `weights` or `mirror`"),
        );
        check(
            "[rf_reg]\nweights = { 1 = -5 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] weights.\"1\": -5 is not a whole number from 0 to 4294967295"),
        );
        check(
            "[rf_reg]\nweights = { 1 = 0.5 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] invalid type: floating point `0.5`, expected i64 in `weights.1`"),
        );
        check(
            "[rf_reg]\nweights = { 1 = 0, 2 = 0 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] weights: at least one version needs a positive weight"),
        );
        check(
            "[rf_reg]\nweights = {}\n",
            Err("invalid traffic file traffic.toml: [rf_reg] weights: at least one version needs a positive weight"),
        );
        check(
            "[rf_reg]\nmirror = { version = \"3\", percent = 101 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] mirror.percent: 101 is not a whole number from 0 to 100"),
        );
        check(
            "[rf_reg]\nmirror = { version = \"3\", percent = -1 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] mirror.percent: -1 is not a whole number from 0 to 100"),
        );
        check(
            "[rf_reg]\nmirror = { version = \"3\" }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] missing field `percent` in `mirror`"),
        );
        check(
            "[rf_reg]\nmirror = { version = \"\", percent = 5 }\n",
            Err("invalid traffic file traffic.toml: [rf_reg] mirror.version is empty"),
        );
        check("rf_reg = 3\n", Err("invalid traffic file traffic.toml: [rf_reg] invalid type: integer `3`, expected a table of `weights` and `mirror`"));
        let syntax = Traffic::parse("[rf_reg\n", "traffic.toml").unwrap_err().to_string();
        assert!(syntax.starts_with("invalid traffic file traffic.toml: TOML parse error at line 1"), "{syntax}");
    }

    #[test]
    fn read_names_the_file() {
        let missing = Traffic::read(Path::new("/nonexistent/traffic.toml")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read the traffic file /nonexistent/traffic.toml: "), "{missing}");
    }
}
