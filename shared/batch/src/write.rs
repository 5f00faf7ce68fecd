//! Output: each chunk's rows (kept columns, then predictions) written as a part in the
//! output's format, and the parts joined, in input order, into the final file.
//!
//! A part holds no header (CSV) and no footer of its own in the joined file: the join
//! writes the CSV header once, copies CSV and JSON Lines parts byte for byte, and copies
//! each Parquet part's batches into one writer, a row group per part. Every step is a
//! function of the part's contents alone, so a resumed job writes the same bytes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use protocol::{ColumnData, Frame};
use serde_json::{Map, Value};

use crate::chunk::Segment;
use crate::read::{KeepKind, Row};
use crate::{BadRow, BatchError, Format};

/// The columns of the output: the kept ones, then the predictions'.
pub fn column_names(keep: &[(String, KeepKind)], predictions: &Frame) -> Vec<String> {
    keep.iter().map(|(k, _)| k.clone()).chain(predictions.columns.iter().map(|c| c.name.clone())).collect()
}

/// Writes the good rows of a chunk (`rows`, scored in `segments`) to `path` as `format`.
pub fn part(
    path: &Path,
    format: Format,
    keep: &[(String, KeepKind)],
    rows: &[Row],
    segments: &[Segment],
) -> Result<(), BatchError> {
    let io = |e: std::io::Error| BatchError::io(path, "cannot write a part", e);
    let file = File::create(path).map_err(io)?;
    match format {
        Format::Csv => {
            let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(BufWriter::new(file));
            let mut record: Vec<String> = Vec::new();
            for segment in segments {
                let cells: Vec<Vec<String>> = segment.predictions.columns.iter().map(|c| csv_cells(&c.data)).collect();
                for (i, row) in rows[segment.start..segment.end].iter().enumerate() {
                    record.clear();
                    record.extend(row.keep.iter().map(csv_text));
                    record.extend(cells.iter().map(|c| c[i].clone()));
                    writer.write_record(&record).map_err(|e| BatchError::io(path, "cannot write a part", e.into()))?;
                }
            }
            writer
                .into_inner()
                .map_err(|e| io(e.into_error()))?
                .into_inner()
                .map_err(|e| io(e.into_error()))?
                .sync_all()
                .map_err(io)?;
        }
        Format::JsonLines => {
            let mut writer = BufWriter::new(file);
            for segment in segments {
                let columns: Vec<(&str, Vec<Value>)> = segment
                    .predictions
                    .columns
                    .iter()
                    .map(|c| (c.name.as_str(), protocol::json::column_to_json(&c.data)))
                    .collect();
                for (i, row) in rows[segment.start..segment.end].iter().enumerate() {
                    let mut object = Map::new();
                    for ((name, _), value) in keep.iter().zip(&row.keep) {
                        object.insert(name.clone(), value.clone());
                    }
                    for (name, values) in &columns {
                        object.insert(name.to_string(), values[i].clone());
                    }
                    serde_json::to_writer(&mut writer, &object).map_err(|e| io(e.into()))?;
                    writer.write_all(b"\n").map_err(io)?;
                }
            }
            writer.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        }
        Format::Parquet => {
            let mut writer: Option<ArrowWriter<File>> = None;
            for segment in segments {
                let batch = record_batch(keep, &rows[segment.start..segment.end], &segment.predictions)?;
                write_batch(&mut writer, &file, &batch, path)?;
            }
            if let Some(writer) = writer {
                writer.close().map_err(|e| parquet(path, e))?;
            }
            file.sync_all().map_err(io)?;
        }
    }
    Ok(())
}

/// The rows of the errors file: `row,column,message`, without its header.
pub fn errors(path: &Path, bad: &[BadRow]) -> Result<(), BatchError> {
    let io = |e: std::io::Error| BatchError::io(path, "cannot write the errors", e);
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(File::create(path).map_err(io)?);
    for row in bad {
        writer.serialize(row).map_err(|e| io(e.into()))?;
    }
    writer.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}

pub const ERRORS_HEADER: &str = "row,column,message\n";

/// Joins `parts` (in order; each with its output columns, `None` for a part with no rows)
/// into `out`.
pub fn join(
    out: &mut File,
    format: Format,
    keep: &[(String, KeepKind)],
    parts: &[(std::path::PathBuf, Option<Vec<String>>)],
) -> Result<(), BatchError> {
    let columns =
        parts.iter().find_map(|(_, c)| c.clone()).unwrap_or_else(|| keep.iter().map(|(k, _)| k.clone()).collect());
    for (path, part_columns) in parts {
        if let Some(part_columns) = part_columns {
            if *part_columns != columns {
                return Err(BatchError::Columns {
                    part: path.display().to_string(),
                    got: part_columns.join(","),
                    expected: columns.join(","),
                });
            }
        }
    }
    let io = |e: std::io::Error| BatchError::io(Path::new("output"), "cannot write the output", e);
    match format {
        Format::Csv | Format::JsonLines => {
            let mut writer = BufWriter::new(&mut *out);
            if format == Format::Csv {
                let mut header = csv::Writer::from_writer(Vec::new());
                header.write_record(&columns).map_err(|e| io(e.into()))?;
                writer.write_all(&header.into_inner().map_err(|e| io(e.into_error()))?).map_err(io)?;
            }
            for (path, _) in parts {
                let mut part = File::open(path).map_err(|e| BatchError::io(path, "cannot read a part", e))?;
                std::io::copy(&mut part, &mut writer).map_err(io)?;
            }
            writer.flush().map_err(io)?;
        }
        Format::Parquet => {
            let io = |e: std::io::Error| BatchError::io(Path::new("output"), "cannot write the output", e);
            let mut writer: Option<ArrowWriter<File>> = None;
            for (path, part_columns) in parts {
                if part_columns.is_none() {
                    continue;
                }
                let part = File::open(path).map_err(|e| BatchError::io(path, "cannot read a part", e))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(part)
                    .and_then(|b| b.build())
                    .map_err(|e| parquet(path, e))?;
                for batch in reader {
                    let batch = batch
                        .map_err(|e| BatchError::Parquet { path: path.display().to_string(), error: e.to_string() })?;
                    write_batch(&mut writer, out, &batch, path)?;
                }
                // A row group per part: the same groups however the job was interrupted.
                if let Some(writer) = &mut writer {
                    writer.flush().map_err(|e| parquet(path, e))?;
                }
            }
            match writer {
                Some(writer) => {
                    writer.close().map_err(|e| parquet(Path::new("output"), e))?;
                }
                None => {
                    // No row was scored: a file of the kept columns and no rows.
                    let fields: Vec<Field> =
                        keep.iter().map(|(name, kind)| Field::new(name, keep_type(*kind), true)).collect();
                    ArrowWriter::try_new(out.try_clone().map_err(io)?, Arc::new(ArrowSchema::new(fields)), None)
                        .and_then(|w| w.close().map(drop))
                        .map_err(|e| parquet(Path::new("output"), e))?;
                }
            }
        }
    }
    out.sync_all().map_err(io)
}

/// Writes `batch` to `file` through `writer`, made with the first batch's schema.
fn write_batch(
    writer: &mut Option<ArrowWriter<File>>,
    file: &File,
    batch: &RecordBatch,
    path: &Path,
) -> Result<(), BatchError> {
    let writer = match writer {
        Some(writer) => writer,
        None => {
            let file = file.try_clone().map_err(|e| BatchError::io(path, "cannot write", e))?;
            writer.insert(ArrowWriter::try_new(file, batch.schema(), None).map_err(|e| parquet(path, e))?)
        }
    };
    writer.write(batch).map_err(|e| parquet(path, e))
}

fn parquet(path: &Path, error: parquet::errors::ParquetError) -> BatchError {
    BatchError::Parquet { path: path.display().to_string(), error: error.to_string() }
}

/// A kept cell as CSV text: text as read, numbers and booleans as JSON writes them,
/// missing as an empty cell.
fn csv_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A prediction column's cells as CSV text: doubles as the shortest text that reads back
/// to the same double, missing as an empty cell, factors as their labels.
fn csv_cells(data: &ColumnData) -> Vec<String> {
    fn each<T>(values: &[Option<T>], show: impl Fn(&T) -> String) -> Vec<String> {
        values.iter().map(|v| v.as_ref().map_or_else(String::new, &show)).collect()
    }
    match data {
        ColumnData::F64 { values } => each(values, |x| match serde_json::Number::from_f64(*x) {
            Some(n) => n.to_string(),
            None if x.is_nan() => "NaN".to_string(),
            None if *x > 0.0 => "Inf".to_string(),
            None => "-Inf".to_string(),
        }),
        ColumnData::I32 { values } => each(values, |x| x.to_string()),
        ColumnData::Bool { values } => each(values, |x| if *x { "TRUE" } else { "FALSE" }.to_string()),
        ColumnData::Str { values } => each(values, Clone::clone),
        ColumnData::Factor { levels, values, .. } => each(values, |c| levels[*c as usize].clone()),
    }
}

fn keep_type(kind: KeepKind) -> DataType {
    match kind {
        KeepKind::Text => DataType::Utf8,
        KeepKind::Float => DataType::Float64,
        KeepKind::Int => DataType::Int64,
        KeepKind::Bool => DataType::Boolean,
    }
}

/// The rows of one segment as an arrow batch: kept columns typed as the input typed them,
/// predictions as their wire types (factors as their labels).
fn record_batch(keep: &[(String, KeepKind)], rows: &[Row], predictions: &Frame) -> Result<RecordBatch, BatchError> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (k, (name, kind)) in keep.iter().enumerate() {
        let cells = rows.iter().map(|r| &r.keep[k]);
        let array: ArrayRef = match kind {
            KeepKind::Text => Arc::new(cells.map(|v| (!v.is_null()).then(|| csv_text(v))).collect::<StringArray>()),
            KeepKind::Float => Arc::new(cells.map(Value::as_f64).collect::<Float64Array>()),
            KeepKind::Int => Arc::new(cells.map(Value::as_i64).collect::<Int64Array>()),
            KeepKind::Bool => Arc::new(cells.map(Value::as_bool).collect::<BooleanArray>()),
        };
        fields.push(Field::new(name, keep_type(*kind), true));
        arrays.push(array);
    }
    for column in &predictions.columns {
        let (data_type, array): (DataType, ArrayRef) = match &column.data {
            ColumnData::F64 { values } => {
                (DataType::Float64, Arc::new(values.iter().copied().collect::<Float64Array>()))
            }
            ColumnData::I32 { values } => (DataType::Int32, Arc::new(values.iter().copied().collect::<Int32Array>())),
            ColumnData::Bool { values } => {
                (DataType::Boolean, Arc::new(values.iter().copied().collect::<BooleanArray>()))
            }
            ColumnData::Str { values } => {
                (DataType::Utf8, Arc::new(values.iter().map(Option::as_deref).collect::<StringArray>()))
            }
            ColumnData::Factor { levels, values, .. } => (
                DataType::Utf8,
                Arc::new(values.iter().map(|c| c.map(|c| levels[c as usize].as_str())).collect::<StringArray>()),
            ),
        };
        fields.push(Field::new(&column.name, data_type, true));
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)
        .map_err(|e| BatchError::Parquet { path: "a part".into(), error: e.to_string() })
}
