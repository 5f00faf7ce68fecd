//! The native engine against R: the real `rfleet-rhost` loads the packages that
//! `native_models.R` makes (randomForest, ranger and gbm models, and some the engine must
//! leave to R), extracts their forests into its cache, and the forests compiled by the
//! `native` crate answer every row exactly as the host's R `predict` does, bit for bit
//! (labels too, bar rows whose vote was a tie, which R breaks at random). Also: the
//! cache is found by a second start, a changed `model.rds` (or an unreadable cache file)
//! is extracted again, and a package directory that cannot hold the cache falls back to
//! the temporary directory. With `r_fallback = false` the host checks a forest against R
//! itself and lets go of the model when they agree, and refuses what still reaches it.

use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use native::NativeModel;
use protocol::host::{read_message, write_message, FromHost, HostOutput, ModelSpec, ToHost, TreeRange};
use protocol::{ColumnData, ErrorBody, ErrorCode, Frame, Input, ModelInfo, ModelRef, NativeForest, NativeLoad};

mod channel;

/// The packages `native_models.R` made, once per test process.
fn packages() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/native_models.R");
        let status = Command::new("Rscript").arg(&script).arg(dir.path()).status().expect("run Rscript");
        assert!(status.success(), "{} failed: {status}", script.display());
        dir
    })
    .path()
}

/// The package `name` of `dir` as the supervisor describes it.
fn spec(dir: &Path, name: &str) -> ModelSpec {
    channel::package_spec(&dir.join(name))
}

/// A running `rfleet-rhost` with the channel on fd 3, killed when dropped.
struct Host {
    child: Child,
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    next_id: u64,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// Starts a host whose temporary directory is `tmp` and has it load `models`; answers
    /// the models that loaded and what became of their native forests.
    fn start(models: Vec<ModelSpec>, tmp: &Path) -> (Host, Vec<ModelInfo>, Vec<NativeLoad>) {
        let (child, ours) = channel::spawn(Stdio::inherit(), |command| {
            command.env("TMPDIR", tmp);
        });
        let mut host =
            Host { child, reader: BufReader::new(ours.try_clone().unwrap()), writer: BufWriter::new(ours), next_id: 0 };
        write_message(&mut host.writer, &ToHost::Load { models }).expect("send load");
        match read_message(&mut host.reader).expect("read the load answer").expect("the host closed the channel") {
            FromHost::Ready { models, failed, native, .. } => {
                assert!(failed.is_empty(), "models failed to load: {failed:?}");
                assert_eq!(native.len(), models.len(), "a native load per model");
                (host, models, native)
            }
            other => panic!("the host did not answer ready: {other:?}"),
        }
    }

    /// R's answer for `frame`.
    fn score(&mut self, model: &str, frame: &Frame, predict_type: &str) -> Frame {
        match self.answer(model, frame, Some(predict_type), None) {
            Ok(HostOutput::Frame(frame)) => frame,
            other => panic!("{model} ({predict_type}): R answered {other:?}"),
        }
    }

    /// What the host answers a `Score` (or, with `trees`, a `ScoreTrees`) of `frame`.
    fn answer(
        &mut self,
        model: &str,
        frame: &Frame,
        predict_type: Option<&str>,
        trees: Option<TreeRange>,
    ) -> Result<HostOutput, ErrorBody> {
        self.next_id += 1;
        let (id, model, input) =
            (self.next_id, ModelRef { name: model.to_string(), version: None }, Input::Frame(frame.clone()));
        let request = match trees {
            None => ToHost::Score { id, model, input, predict_type: predict_type.map(str::to_string) },
            Some(trees) => ToHost::ScoreTrees { id, model, input, trees },
        };
        write_message(&mut self.writer, &request).expect("send score");
        match read_message(&mut self.reader).expect("read the answer").expect("the host died") {
            FromHost::Scored { result, .. } => result,
            other => panic!("the host answered {other:?}"),
        }
    }
}

/// The forest of a `Ready` load, read from its cache file.
fn cached_forest(load: &NativeLoad) -> (PathBuf, bool, NativeForest) {
    match load {
        NativeLoad::Ready { path, extracted, .. } => {
            let bytes = std::fs::read(path).expect("read the cache file");
            (path.clone(), *extracted, protocol::decode(&bytes).expect("decode the cached forest"))
        }
        other => panic!("expected a ready forest, got {other:?}"),
    }
}

/// The models the engine answers, and those it leaves to R with (part of) the reason.
const NATIVE: &[&str] = &[
    "rf_reg",
    "rf_bias",
    "rf_xy",
    "rf_class",
    "rf_cutoff",
    "rf_ordered",
    "rf_ties",
    "ranger_order",
    "ranger_partition",
    "ranger_ignore",
    "ranger_class",
    "ranger_prob",
    "gbm_gaussian",
    "gbm_bernoulli",
    "gbm_ordered",
    "gbm_poisson",
];
const LEFT_TO_R: &[(&str, &str)] = &[
    ("gbm_multinomial", "gbm distribution multinomial"),
    ("ranger_survival", "ranger survival forests"),
    ("rf_no_forest", "keep.forest = FALSE"),
    ("rf_predict_fn", "score.R"),
];

/// One comparison: native and R answer the same columns, types and values (doubles bit
/// for bit; labels except at the native answer's ties). Answers the number of ties.
fn check(model: &str, predict_type: &str, native: &native::Prediction, r: &Frame) -> usize {
    let label = format!("{model} ({predict_type})");
    let names = |f: &Frame| f.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&native.frame), names(r), "{label}: columns");
    assert_eq!(native.frame.n_rows, r.n_rows, "{label}: rows");
    for (ours, theirs) in native.frame.columns.iter().zip(&r.columns) {
        match (&ours.data, &theirs.data) {
            (ColumnData::F64 { values: a }, ColumnData::F64 { values: b }) => {
                for (row, (a, b)) in a.iter().zip(b).enumerate() {
                    assert_eq!(
                        a.map(f64::to_bits),
                        b.map(f64::to_bits),
                        "{label}: column {} row {row}: native {a:?}, R {b:?}",
                        ours.name
                    );
                }
            }
            (
                ColumnData::Factor { levels: a_levels, values: a, .. },
                ColumnData::Factor { levels: b_levels, values: b, .. },
            ) => {
                assert_eq!(a_levels, b_levels, "{label}: levels");
                for (row, (a, b)) in a.iter().zip(b).enumerate() {
                    if !native.ties.contains(&row) {
                        assert_eq!(a, b, "{label}: row {row}");
                    }
                }
            }
            (a, b) => panic!("{label}: column {}: native {}, R {}", ours.name, a.type_name(), b.type_name()),
        }
    }
    native.ties.len()
}

#[test]
fn native_forests_answer_exactly_what_r_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<&str> = NATIVE.iter().copied().chain(LEFT_TO_R.iter().map(|(name, _)| *name)).collect();
    let specs = names.iter().map(|name| spec(packages(), name)).chain([spec(packages(), "rf_engine_r")]).collect();
    let (mut host, infos, loads) = Host::start(specs, tmp.path());
    let mut ties = 0;
    let mut labels = 0;
    for ((info, load), name) in infos.iter().zip(&loads).zip(&names) {
        assert_eq!(&info.name, name);
        if let Some((_, reason)) = LEFT_TO_R.iter().find(|(n, _)| n == name) {
            match load {
                NativeLoad::Unsupported { reason: got } => assert!(got.contains(reason), "{name}: {got:?}"),
                other => panic!("{name}: expected unsupported, got {other:?}"),
            }
            continue;
        }
        let (_, extracted, forest) = cached_forest(load);
        assert!(extracted, "{name}: a first load extracts");
        let model = NativeModel::compile(&forest).unwrap_or_else(|e| panic!("{name}: {e}"));
        let schema = info.schema.clone().unwrap_or_else(|| panic!("{name} has a schema"));
        for &predict_type in model.types() {
            for seed in 1..=3 {
                let frame = model.sample(&schema, 400, seed);
                let native = model.predict(&frame, Some(predict_type)).unwrap_or_else(|e| panic!("{name}: {e}"));
                let r = host.score(name, &frame, predict_type);
                let n_ties = check(name, predict_type, &native, &r);
                if matches!(native.frame.columns[0].data, ColumnData::Factor { .. }) {
                    ties += n_ties;
                    labels += frame.n_rows;
                }
            }
        }
    }
    assert!(ties > 0, "rf_ties's ten small trees tie on some rows");
    assert!(ties * 5 < labels, "{ties} ties in {labels} labels");
    assert_eq!(loads.last(), Some(&NativeLoad::Off), "engine = \"r\" extracts nothing");
}

#[test]
fn the_cache_is_found_again_and_a_changed_model_rds_is_extracted_again() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["rf_class", "gbm_bernoulli"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        for file in ["model.rds", "model.toml", "model-resaved.rds"] {
            std::fs::copy(packages().join(name).join(file), dir.path().join(name).join(file)).unwrap();
        }
    }
    // gbm_bernoulli's package cannot hold a `.rfleet` directory: its cache goes to TMPDIR.
    std::fs::write(dir.path().join("gbm_bernoulli/.rfleet"), "not a directory").unwrap();
    let specs = || vec![spec(dir.path(), "rf_class"), spec(dir.path(), "gbm_bernoulli")];
    let start = || Host::start(specs(), tmp.path()).2.iter().map(cached_forest).collect::<Vec<_>>();

    let first = start();
    assert!(first.iter().all(|(_, extracted, _)| *extracted), "a first start extracts");
    assert!(first[0].0.starts_with(dir.path().join("rf_class/.rfleet")), "{:?}", first[0].0);
    assert!(first[1].0.starts_with(tmp.path().join("rfleet-native")), "{:?}", first[1].0);

    let second = start();
    for ((path, extracted, forest), (first_path, _, first_forest)) in second.iter().zip(&first) {
        assert!(!extracted, "{path:?}: a second start reads the cache");
        assert_eq!((path, forest), (first_path, first_forest));
    }

    std::fs::copy(dir.path().join("rf_class/model-resaved.rds"), dir.path().join("rf_class/model.rds")).unwrap();
    let third = start();
    let (path, extracted, forest) = &third[0];
    assert!(extracted, "a changed model.rds is extracted again");
    assert_ne!(path, &first[0].0, "another digest, another file");
    assert_eq!(forest, &first[0].2, "the same model, the same forest");
    assert!(!third[1].1, "the unchanged model still reads its cache");

    // A cache file that does not decode (a crash mid-write of another writer, a disk
    // fault) is extracted again in its place.
    std::fs::write(path, b"not msgpack").unwrap();
    let (again, extracted, rewritten) = Host::start(specs(), tmp.path()).2.iter().map(cached_forest).next().unwrap();
    assert!(extracted, "an unreadable cache file is extracted again");
    assert_eq!((&again, &rewritten), (path, forest));
}

/// `r_fallback = false` (issue 13, item 4): the host runs the self-check itself (the
/// worker's rows, every type the engine answers) and, R and the forest agreeing, lets go of
/// the model: `Ready` says so, offers no forest to split, and a request that still reaches
/// the host is refused naming the option. The model beside it keeps R as its fallback.
#[test]
fn a_host_releases_a_checked_model_and_refuses_what_reaches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let released = ModelSpec { r_fallback: false, ..spec(packages(), "rf_class") };
    let (mut host, infos, native) = Host::start(vec![released, spec(packages(), "rf_reg")], tmp.path());
    match &native[0] {
        NativeLoad::Ready { check: Some(check), released: true, .. } => {
            assert!(check.passed && check.mismatches == 0, "{check:?}");
            assert_eq!(check.rows as usize, native::SELF_CHECK_ROWS, "{check:?}");
            assert_eq!(check.types, ["response", "class", "prob", "vote"], "{check:?}");
        }
        other => panic!("rf_class: expected a released forest, got {other:?}"),
    }
    assert!(infos[0].forest.is_none(), "a released model is not split over hosts: {:?}", infos[0].forest);
    assert!(matches!(&native[1], NativeLoad::Ready { check: None, released: false, .. }), "{:?}", native[1]);
    assert!(infos[1].forest.is_some(), "rf_reg keeps R, and its forest can be split");

    let (_, _, forest) = cached_forest(&native[0]);
    let schema = infos[0].schema.as_ref().unwrap();
    let rows = protocol::conform(&NativeModel::compile(&forest).unwrap().sample(schema, 8, 1), schema).unwrap();
    for trees in [None, Some(TreeRange { start: 0, end: 2 })] {
        match host.answer("rf_class", &rows, Some("prob"), trees) {
            Err(ErrorBody { code: ErrorCode::InvalidInput, message }) => {
                assert!(message.contains("model 'rf_class'") && message.contains("r_fallback = false"), "{message}")
            }
            other => panic!("a released model must be refused, got {other:?}"),
        }
    }
    let rf_reg = infos[1].schema.as_ref().unwrap();
    let (_, _, reg_forest) = cached_forest(&native[1]);
    let reg_rows = protocol::conform(&NativeModel::compile(&reg_forest).unwrap().sample(rf_reg, 8, 1), rf_reg).unwrap();
    assert_eq!(host.score("rf_reg", &reg_rows, "response").n_rows, 8, "the host keeps serving");
}
