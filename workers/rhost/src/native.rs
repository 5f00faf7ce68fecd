//! Native forests at load: what became of each model's forest for the native engine
//! ([`NativeLoad`]), the cache beside the model, and reading the prelude's
//! `.rfleet_native()` answer into a [`NativeForest`].
//!
//! # Cache
//! The forest of a `model.rds` is kept in `<package>/.rfleet/native-<digest>.msgpack`
//! (`protocol::encode` of the [`NativeForest`]), or, where the package directory cannot be
//! written, in `<temp dir>/rfleet-native/` under the same name. The digest is the sha256
//! of `model.rds` and of the model's input schema: levels a model does not store (ranger's
//! partitioned factors, randomForest's ordered ones) come from its schema, so a forest
//! extracted under one `model.toml` is not another's. A load that finds a cache file of
//! that digest whose `format` is [`NATIVE_FORMAT`] uses it without calling R's extractor;
//! otherwise it extracts and writes the file (to a temporary name, then renamed, so that a
//! reader never sees half a file). A changed `model.rds` (or schema) has another digest,
//! so it is extracted again.
//!
//! Nothing here fails a model's load: a failure is [`NativeLoad::Failed`], and the model
//! is served by R.

use std::path::{Path, PathBuf};

use extendr_api::prelude::*;
use protocol::host::ModelSpec;
use protocol::native::{read_forest, NativeInput, NativeOutput, NativeTree, NATIVE_FORMAT};
use protocol::{Algorithm, ColumnType, Engine, ModelKind, NativeForest, NativeLoad, Schema};
use sha2::{Digest, Sha256};

use crate::convert;

/// What became of a loaded model's native forest. `model` is the model object (for
/// models called by `predict`), `extract` the prelude's `.rfleet_native`, `schema` the
/// model's schema, whose factor levels stand in for levels the model does not store.
pub fn load(
    spec: &ModelSpec,
    kind: ModelKind,
    model: &Robj,
    schema: Option<&Schema>,
    extract: &Function,
) -> NativeLoad {
    if spec.engine == Engine::R {
        return NativeLoad::Off;
    }
    match kind {
        ModelKind::Predict => {}
        ModelKind::PredictFn => return unsupported("a model called through score.R's predict_fn"),
        ModelKind::AzureMl => return unsupported("a model called through score.R (an Azure ML entry script)"),
    }
    let file = match std::fs::read(spec.dir.join("model.rds")) {
        Ok(bytes) => {
            let mut digest = Sha256::new();
            digest.update(&bytes);
            if let Some(schema) = schema {
                match protocol::encode(schema) {
                    Ok(schema) => digest.update(&schema),
                    Err(e) => return NativeLoad::Failed { reason: format!("encoding the schema: {e}") },
                }
            }
            format!("native-{:x}.msgpack", digest.finalize())
        }
        Err(e) => return NativeLoad::Failed { reason: format!("reading model.rds: {e}") },
    };
    let places = [spec.dir.join(".rfleet"), std::env::temp_dir().join("rfleet-native")];
    if let Some(path) = places.iter().map(|dir| dir.join(&file)).find(|path| read_forest(path).is_ok()) {
        return NativeLoad::Ready { path, extracted: false, check: None, released: false };
    }
    let forest = match extract_forest(model, schema, extract) {
        Ok(Ok(forest)) => forest,
        Ok(Err(reason)) => return NativeLoad::Unsupported { reason },
        Err(reason) => return NativeLoad::Failed { reason },
    };
    let bytes = match protocol::encode(&forest) {
        Ok(bytes) => bytes,
        Err(e) => return NativeLoad::Failed { reason: format!("encoding the forest: {e}") },
    };
    let mut errors = Vec::new();
    for dir in &places {
        match write(dir, &file, &bytes) {
            Ok(path) => return NativeLoad::Ready { path, extracted: true, check: None, released: false },
            Err(e) => errors.push(format!("{}: {e}", dir.display())),
        }
    }
    NativeLoad::Failed { reason: format!("writing the forest's cache file: {}", errors.join("; ")) }
}

fn unsupported(reason: &str) -> NativeLoad {
    NativeLoad::Unsupported { reason: reason.to_string() }
}

/// Writes `bytes` to `dir/file` through a temporary file in `dir`.
fn write(dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    let temporary = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes).and_then(|()| std::fs::rename(&temporary, &path)).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })?;
    Ok(path)
}

/// Calls the extractor: the forest, or why the engine does not cover the model (inner
/// `Err`), or why extraction failed (outer `Err`).
fn extract_forest(
    model: &Robj,
    schema: Option<&Schema>,
    extract: &Function,
) -> std::result::Result<std::result::Result<NativeForest, String>, String> {
    let answer = extract
        .call(Pairlist::from_pairs([("", model.clone())]))
        .map_err(|e| format!("extracting the forest failed in R: {e}"))?;
    let message = || answer.as_str().unwrap_or("extracting the forest failed").to_string();
    if answer.inherits("rfleet_error") {
        return Err(message());
    }
    if answer.inherits("rfleet_unsupported") {
        return Ok(Err(message()));
    }
    forest_from_r(&answer, schema)
}

/// Reads `.rfleet_native()`'s list (see the prelude) into a forest, unpacking
/// randomForest's and ranger's categorical split codes into directions per level.
fn forest_from_r(
    x: &Robj,
    schema: Option<&Schema>,
) -> std::result::Result<std::result::Result<NativeForest, String>, String> {
    let fields = convert::fields(&x.as_list().ok_or("the extractor answered no list")?);
    let field = |key: &str| fields.get(key).ok_or_else(|| format!("the extracted forest has no '{key}'"));
    let algorithm = match field("algorithm")?.as_str() {
        Some("random_forest") => Algorithm::RandomForest,
        Some("ranger") => Algorithm::Ranger,
        Some("gbm") => Algorithm::Gbm,
        other => return Err(format!("the extracted forest is of unknown algorithm {other:?}")),
    };
    let package_version = field("package_version")?.as_str().unwrap_or_default().to_string();
    let mut inputs = Vec::new();
    for input in field("inputs")?.as_list().ok_or("the extracted inputs are not a list")?.values() {
        match input_from_r(&input, schema)? {
            Ok(input) => inputs.push(input),
            Err(unsupported) => return Ok(Err(unsupported)),
        }
    }
    let trees = field("trees")?
        .as_list()
        .ok_or("the extracted trees are not a list")?
        .values()
        .enumerate()
        .map(|(t, tree)| tree_from_r(&tree, algorithm, &inputs).map_err(|e| format!("tree {}: {e}", t + 1)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let output = output_from_r(field("output")?)?;
    Ok(Ok(NativeForest { format: NATIVE_FORMAT, algorithm, package_version, inputs, trees, output }))
}

/// One input; a categorical one whose levels neither the model nor the schema give is
/// unsupported (its codes could not be told).
fn input_from_r(
    x: &Robj,
    schema: Option<&Schema>,
) -> std::result::Result<std::result::Result<NativeInput, String>, String> {
    let fields = convert::fields(&x.as_list().ok_or("an extracted input is not a list")?);
    let name = fields.get("name").and_then(|n| n.as_str()).ok_or("an extracted input has no name")?.to_string();
    let categorical = fields.get("categorical").and_then(|c| c.as_bool()).unwrap_or(false);
    let code_base = fields.get("code_base").and_then(|c| c.as_integer()).unwrap_or(0);
    // The model's own levels, else those of a factor in the schema: a frame conformed
    // to the schema gives R exactly those codes.
    let levels = fields.get("levels").and_then(|l| l.as_string_vector()).or_else(|| {
        schema?
            .columns
            .iter()
            .find(|c| c.name == name && matches!(c.column_type, ColumnType::Factor | ColumnType::Ordered))?
            .levels
            .clone()
    });
    if categorical && levels.is_none() {
        return Ok(Err(format!(
            "input '{name}' is an unordered factor whose levels neither the model nor its schema give"
        )));
    }
    Ok(Ok(NativeInput { name, levels, categorical, code_base: u32::try_from(code_base).unwrap_or(0) }))
}

fn tree_from_r(x: &Robj, algorithm: Algorithm, inputs: &[NativeInput]) -> std::result::Result<NativeTree, String> {
    let fields = convert::fields(&x.as_list().ok_or("not a list")?);
    let ints = |key: &str| -> std::result::Result<Vec<i32>, String> {
        match fields.get(key) {
            Some(v) if v.is_null() => Ok(Vec::new()),
            Some(v) => v.as_integer_slice().map(<[i32]>::to_vec).ok_or_else(|| format!("'{key}' is not integers")),
            None => Ok(Vec::new()),
        }
    };
    let nodes = |key: &str| -> std::result::Result<Vec<u32>, String> {
        ints(key)?.into_iter().map(|i| u32::try_from(i).map_err(|_| format!("'{key}' holds node {i}"))).collect()
    };
    let doubles = |key: &str| -> std::result::Result<Vec<f64>, String> {
        fields
            .get(key)
            .and_then(|v| v.as_real_slice())
            .map(<[f64]>::to_vec)
            .ok_or_else(|| format!("'{key}' is not doubles"))
    };
    let lists = |key: &str| fields.get(key).and_then(|v| v.as_list()).map(|l| l.values().collect::<Vec<Robj>>());
    let var = ints("var")?;
    let mut split = doubles("split")?;
    let mut sets = Vec::new();
    match algorithm {
        Algorithm::Gbm => {
            for set in lists("sets").unwrap_or_default() {
                let set = set.as_integer_slice().ok_or("a set is not integers")?;
                sets.push(set.iter().map(|&d| d.clamp(-1, 1) as i8).collect());
            }
        }
        Algorithm::RandomForest | Algorithm::Ranger => {
            for (k, &v) in var.iter().enumerate() {
                let Some(input) = usize::try_from(v).ok().and_then(|v| inputs.get(v)) else { continue };
                if !input.categorical {
                    continue;
                }
                let n_levels = input.levels.as_ref().map_or(0, Vec::len);
                let set = unpack(split.get(k).copied().unwrap_or(-1.0), n_levels, algorithm)
                    .ok_or_else(|| format!("node {k}'s categorical split {:?} cannot be unpacked", split.get(k)))?;
                split[k] = sets.len() as f64;
                sets.push(set);
            }
        }
    }
    let distribution = match lists("distribution") {
        Some(leaves) => leaves
            .iter()
            .map(|d| d.as_real_slice().map(<[f64]>::to_vec).ok_or("a leaf distribution is not doubles".to_string()))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(NativeTree {
        var,
        split,
        left: nodes("left")?,
        right: nodes("right")?,
        missing: nodes("missing")?,
        value: doubles("value")?,
        distribution,
        sets,
    })
}

/// A categorical split's directions per level from its packed code: randomForest sends
/// a level left when its bit is set (`(unsigned long) dpack & 1`, then `dpack / 2`),
/// ranger when it is not (`!(splitID & (1ULL << factorID))`). `None` for a code that is
/// not a whole number of at most 53 bits, or more levels than bits.
fn unpack(code: f64, n_levels: usize, algorithm: Algorithm) -> Option<Vec<i8>> {
    if !(0.0..=9_007_199_254_740_992.0).contains(&code) || n_levels > 53 {
        return None;
    }
    // ranger's `floor(split_value)`; randomForest's truncation is the same for these.
    let bits = code.floor() as u64;
    let set_goes = if algorithm == Algorithm::RandomForest { -1 } else { 1 };
    Some((0..n_levels).map(|level| if bits >> level & 1 == 1 { set_goes } else { -set_goes }).collect())
}

fn output_from_r(x: &Robj) -> std::result::Result<NativeOutput, String> {
    let fields = convert::fields(&x.as_list().ok_or("the extracted output is not a list")?);
    let strings = |key: &str| {
        fields.get(key).and_then(|v| v.as_string_vector()).ok_or_else(|| format!("the output has no '{key}'"))
    };
    let doubles = |key: &str| {
        fields
            .get(key)
            .and_then(|v| v.as_real_slice())
            .map(<[f64]>::to_vec)
            .ok_or_else(|| format!("the output has no '{key}'"))
    };
    let output = match fields.get("kind").and_then(|k| k.as_str()) {
        Some("mean") => NativeOutput::Mean {
            bias: match fields.get("bias") {
                Some(bias) if !bias.is_null() => match bias.as_real_slice() {
                    Some(&[a, b]) => Some([a, b]),
                    _ => return Err("the bias correction is not two doubles".into()),
                },
                _ => None,
            },
        },
        Some("votes") => NativeOutput::Votes { classes: strings("classes")?, cutoff: doubles("cutoff")? },
        Some("majority") => NativeOutput::Majority { classes: strings("classes")? },
        Some("distribution") => NativeOutput::Distribution { classes: strings("classes")? },
        Some("boosted") => NativeOutput::Boosted {
            init: fields.get("init").and_then(|i| i.as_real()).ok_or("the output has no 'init'")?,
            distribution: fields
                .get("distribution")
                .and_then(|d| d.as_str())
                .ok_or("the output has no 'distribution'")?
                .to_string(),
        },
        other => return Err(format!("the output is of unknown kind {other:?}")),
    };
    Ok(output)
}
