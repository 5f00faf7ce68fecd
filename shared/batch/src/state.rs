//! A job's state beside its output (`<output>.rfleet-job/`), so a killed job resumes
//! exactly once: `job.json` (what the job is; a resume must be the same job) and one
//! directory per chunk done, `parts/<chunk>/` (its rows, its bad rows, `meta.json`).
//!
//! Every file is written under a temporary name and renamed into place, and a chunk's
//! directory is made whole under a temporary name and renamed: a chunk is done exactly
//! when its directory exists, whatever instant the runner was killed at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::read::KeepKind;
use crate::{BatchError, Format};

/// What a job is: a resume with any of it changed would not be the same job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub version: u32,
    pub model: String,
    pub input: String,
    pub input_bytes: u64,
    pub input_modified_ms: u64,
    pub input_format: Format,
    pub output_format: Format,
    pub chunk_rows: usize,
    pub keep: Vec<(String, KeepKind)>,
}

/// What a chunk done holds, read back when the job resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMeta {
    pub first_row: u64,
    pub rows: u64,
    pub bad_rows: u64,
    /// The output's columns; `None` when no row of the chunk was scored.
    pub columns: Option<Vec<String>>,
    pub r_ms: f64,
    pub worker_ms: f64,
    pub r_calls: u32,
}

pub const PART_ROWS: &str = "rows";
pub const PART_ERRORS: &str = "errors.csv";
const PART_META: &str = "meta.json";

/// The state directory of a job.
pub struct JobDir {
    pub dir: PathBuf,
}

impl JobDir {
    /// The state directory of the output `output`.
    pub fn of(output: &Path) -> JobDir {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".rfleet-job");
        JobDir { dir: output.with_file_name(name) }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("job.json").is_file()
    }

    /// Starts a new job's state, or checks that the state there is of `job` (a resume).
    pub fn open(&self, job: &JobFile, resume: bool) -> Result<BTreeMap<u64, ChunkMeta>, BatchError> {
        let io = |what: &'static str| move |e| BatchError::io(&self.dir, what, e);
        if !resume {
            if self.exists() {
                return Err(BatchError::StateExists { dir: self.dir.display().to_string() });
            }
            // A state without its `job.json` is of a run killed before it began: nothing
            // in it is done.
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir).map_err(io("cannot clear an unstarted job's state"))?;
            }
            std::fs::create_dir_all(self.dir.join("parts")).map_err(io("cannot make the job state"))?;
            write_atomic(&self.dir.join("job.json"), &serde_json::to_vec_pretty(job).expect("a job serializes"))?;
            return Ok(BTreeMap::new());
        }
        let text = std::fs::read(self.dir.join("job.json")).map_err(io("cannot read the job state"))?;
        let earlier: JobFile = serde_json::from_slice(&text)
            .map_err(|e| BatchError::State { dir: self.dir.display().to_string(), message: e.to_string() })?;
        if let Some(field) = differs(&earlier, job) {
            return Err(BatchError::NotTheSameJob { dir: self.dir.display().to_string(), field });
        }
        let mut done = BTreeMap::new();
        for entry in std::fs::read_dir(self.dir.join("parts")).map_err(io("cannot read the job state"))? {
            let entry = entry.map_err(io("cannot read the job state"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match name.parse::<u64>() {
                Ok(chunk) => {
                    let meta =
                        std::fs::read(entry.path().join(PART_META)).map_err(io("cannot read a chunk's state"))?;
                    let meta: ChunkMeta = serde_json::from_slice(&meta).map_err(|e| BatchError::State {
                        dir: entry.path().display().to_string(),
                        message: e.to_string(),
                    })?;
                    done.insert(chunk, meta);
                }
                // A chunk the runner was killed while writing: never renamed, never done.
                Err(_) => std::fs::remove_dir_all(entry.path()).map_err(io("cannot clear a partial chunk"))?,
            }
        }
        Ok(done)
    }

    pub fn part(&self, chunk: u64) -> PathBuf {
        self.dir.join("parts").join(format!("{chunk:08}"))
    }

    /// Records chunk `chunk` as done: `fill` writes its files into a fresh directory, which
    /// is then renamed to the chunk's.
    pub fn commit(
        &self,
        chunk: u64,
        meta: &ChunkMeta,
        fill: impl FnOnce(&Path) -> Result<(), BatchError>,
    ) -> Result<(), BatchError> {
        let parts = self.dir.join("parts");
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{chunk:08}-"))
            .tempdir_in(&parts)
            .map_err(|e| BatchError::io(&parts, "cannot make a chunk's directory", e))?;
        fill(staging.path())?;
        write_atomic(&staging.path().join(PART_META), &serde_json::to_vec(meta).expect("a chunk's meta serializes"))?;
        let staging = staging.keep();
        std::fs::rename(&staging, self.part(chunk))
            .map_err(|e| BatchError::io(&staging, "cannot commit a chunk", e))?;
        sync_dir(&parts)
    }

    pub fn remove(&self) -> Result<(), BatchError> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| BatchError::io(&self.dir, "cannot remove the job state", e))
    }
}

/// The first field of `job` a resume changed, by name.
fn differs(earlier: &JobFile, job: &JobFile) -> Option<&'static str> {
    [
        (earlier.version != job.version, "the state's version"),
        (earlier.model != job.model, "--model"),
        (earlier.input != job.input, "--input"),
        (
            earlier.input_bytes != job.input_bytes || earlier.input_modified_ms != job.input_modified_ms,
            "the input file (it changed since)",
        ),
        (earlier.input_format != job.input_format || earlier.output_format != job.output_format, "--format"),
        (earlier.chunk_rows != job.chunk_rows, "--chunk-rows"),
        (earlier.keep != job.keep, "--keep"),
    ]
    .into_iter()
    .find_map(|(changed, field)| changed.then_some(field))
}

/// Writes `bytes` to `path` under a temporary name in the same directory, synced, then
/// renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BatchError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| BatchError::io(dir, "cannot write", e))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .map_err(|e| BatchError::io(path, "cannot write", e))?;
    file.persist(path).map_err(|e| BatchError::io(path, "cannot write", e.error))?;
    sync_dir(dir)
}

/// Makes a directory's renames durable.
pub fn sync_dir(dir: &Path) -> Result<(), BatchError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| BatchError::io(dir, "cannot sync", e))
}
