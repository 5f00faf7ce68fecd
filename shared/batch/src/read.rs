//! Input files read in chunks of rows: CSV, JSON Lines and Parquet, streamed, never whole.
//!
//! Every format yields the same [`Row`]s: the cells the model reads, as JSON values (the
//! one converter from rows to a typed frame is `protocol::json`, the HTTP front's), and
//! the cells of the columns the user keeps (`--keep`), as the file holds them.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use protocol::{ColumnType, Schema};
use serde_json::Value;

use crate::{BadRow, BatchError, Format};

/// One input row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based, counted over the whole input (a header line is not a row).
    pub number: u64,
    /// The model's columns ([`Input::model_columns`]), in that order.
    pub model: Vec<Value>,
    /// The kept columns ([`Input::keep`]), in that order.
    pub keep: Vec<Value>,
    /// Why the row could not even be read (a malformed JSON line): it is not scored.
    pub unreadable: Option<BadRow>,
}

/// How a kept column's cells are typed in a typed output (Parquet): as the input types them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepKind {
    /// Text as read (CSV cells), or any JSON value shown as its JSON text.
    Text,
    Float,
    Int,
    Bool,
}

/// An open input: what it holds and where the reading is.
pub struct Input {
    /// The columns sent to the model: the schema's (all present), or every column of the
    /// input when the model has no schema.
    pub model_columns: Vec<String>,
    pub keep: Vec<(String, KeepKind)>,
    /// Rows in the whole input, when the format says so up front (Parquet).
    pub total_rows: Option<u64>,
    source: Source,
    rows_read: u64,
}

enum Source {
    Csv {
        records: csv::StringRecordsIntoIter<BufReader<File>>,
        model_at: Vec<(usize, Option<ColumnType>)>,
        keep_at: Vec<usize>,
        /// The header's fields: a row of another length is a bad row.
        n_fields: usize,
    },
    JsonLines {
        lines: std::io::Lines<BufReader<File>>,
    },
    Parquet {
        batches: ParquetRecordBatchReader,
        current: Option<(RecordBatch, usize)>,
        n_model: usize,
    },
}

impl Input {
    /// Opens `path` as `format` for a model of `schema`, keeping the columns `keep`.
    pub fn open(path: &Path, format: Format, schema: Option<&Schema>, keep: &[String]) -> Result<Input, BatchError> {
        let file = File::open(path).map_err(|e| BatchError::io(path, "cannot open the input", e))?;
        match format {
            Format::Csv => Self::csv(path, file, schema, keep),
            Format::JsonLines => {
                let model_columns: Vec<String> = match schema {
                    Some(schema) => schema.columns.iter().map(|c| c.name.clone()).collect(),
                    None => return Err(BatchError::NoSchema { format: "JSON Lines" }),
                };
                Ok(Input {
                    model_columns,
                    keep: keep.iter().map(|k| (k.clone(), KeepKind::Text)).collect(),
                    total_rows: None,
                    source: Source::JsonLines { lines: BufReader::new(file).lines() },
                    rows_read: 0,
                })
            }
            Format::Parquet => Self::parquet(path, file, schema, keep),
        }
    }

    fn csv(path: &Path, file: File, schema: Option<&Schema>, keep: &[String]) -> Result<Input, BatchError> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(BufReader::new(file));
        let headers = reader
            .headers()
            .map_err(|e| BatchError::Csv { path: path.display().to_string(), error: e.to_string() })?
            .clone();
        let names: Vec<String> = headers.iter().map(str::to_string).collect();
        let position = |name: &str| names.iter().position(|n| n == name);
        let model: Vec<(String, Option<ColumnType>)> = match schema {
            Some(schema) => schema.columns.iter().map(|c| (c.name.clone(), Some(c.column_type))).collect(),
            None => names.iter().map(|n| (n.clone(), None)).collect(),
        };
        let model_at = model
            .iter()
            .map(|(name, kind)| Ok((position(name).ok_or_else(|| missing(name, &names))?, *kind)))
            .collect::<Result<Vec<_>, BatchError>>()?;
        let keep_at =
            keep.iter().map(|k| position(k).ok_or_else(|| missing_keep(k, &names))).collect::<Result<_, _>>()?;
        Ok(Input {
            model_columns: model.into_iter().map(|(n, _)| n).collect(),
            keep: keep.iter().map(|k| (k.clone(), KeepKind::Text)).collect(),
            total_rows: None,
            source: Source::Csv { n_fields: names.len(), records: reader.into_records(), model_at, keep_at },
            rows_read: 0,
        })
    }

    fn parquet(path: &Path, file: File, schema: Option<&Schema>, keep: &[String]) -> Result<Input, BatchError> {
        let parquet_error = |e: parquet::errors::ParquetError| BatchError::Parquet {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let fields = builder.schema().fields().clone();
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        let model_columns: Vec<String> = match schema {
            Some(schema) => schema.columns.iter().map(|c| c.name.clone()).collect(),
            None => names.clone(),
        };
        let total_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).ok();
        let mut wanted: Vec<usize> = Vec::new();
        for name in &model_columns {
            wanted.push(names.iter().position(|n| n == name).ok_or_else(|| missing(name, &names))?);
        }
        let mut keep_kinds = Vec::new();
        for name in keep {
            let at = names.iter().position(|n| n == name).ok_or_else(|| missing_keep(name, &names))?;
            keep_kinds.push((name.clone(), keep_kind(fields[at].data_type())));
            wanted.push(at);
        }
        // The projection reads each wanted leaf once, in the file's order; cells are then
        // picked by name from each batch, so a column both kept and read by the model and
        // any order of `wanted` work alike.
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
        let batches = builder.with_projection(mask).with_batch_size(8192).build().map_err(parquet_error)?;
        let n_model = model_columns.len();
        Ok(Input {
            model_columns,
            keep: keep_kinds,
            total_rows,
            source: Source::Parquet { batches, current: None, n_model },
            rows_read: 0,
        })
    }

    /// The next rows, at most `max`; an empty vector at the end of the input.
    pub fn next_rows(&mut self, max: usize, path: &Path) -> Result<Vec<Row>, BatchError> {
        let mut rows = Vec::with_capacity(max.min(65_536));
        while rows.len() < max {
            let number = self.rows_read + 1;
            let row = match &mut self.source {
                Source::Csv { records, model_at, keep_at, n_fields } => match records.next() {
                    None => break,
                    Some(record) => {
                        let record = record
                            .map_err(|e| BatchError::Csv { path: path.display().to_string(), error: e.to_string() })?;
                        let cell = |at: usize| record.get(at).unwrap_or("");
                        // Read as flexible, so that a ragged row is one bad row rather
                        // than the end of the job.
                        let unreadable = (record.len() != *n_fields).then(|| BadRow {
                            row: number,
                            column: String::new(),
                            message: format!("has {} fields, the header has {n_fields}", record.len()),
                        });
                        Row {
                            number,
                            model: model_at.iter().map(|(at, kind)| csv_cell(cell(*at), *kind)).collect(),
                            keep: keep_at.iter().map(|at| Value::String(cell(*at).to_string())).collect(),
                            unreadable,
                        }
                    }
                },
                Source::JsonLines { lines } => {
                    let Some(line) = lines.next() else { break };
                    let line = line.map_err(|e| BatchError::io(path, "cannot read the input", e))?;
                    if line.trim().is_empty() {
                        // A blank line (the last newline's, or a gap) holds no row.
                        continue;
                    }
                    json_row(number, &line, &self.model_columns, &self.keep)
                }
                Source::Parquet { batches, current, n_model } => {
                    if current.as_ref().is_none_or(|(batch, next)| *next >= batch.num_rows()) {
                        match batches.next() {
                            None => break,
                            Some(batch) => {
                                let batch = batch.map_err(|e| BatchError::Parquet {
                                    path: path.display().to_string(),
                                    error: e.to_string(),
                                })?;
                                *current = Some((batch, 0));
                                continue;
                            }
                        }
                    }
                    let (batch, next) = current.as_mut().expect("a current batch");
                    let take = (max - rows.len()).min(batch.num_rows() - *next);
                    let model: Vec<Vec<Value>> = self
                        .model_columns
                        .iter()
                        .map(|name| column_values(batch, name, *next, take))
                        .collect::<Result<_, _>>()?;
                    let keep: Vec<Vec<Value>> = self
                        .keep
                        .iter()
                        .map(|(name, _)| column_values(batch, name, *next, take))
                        .collect::<Result<_, _>>()?;
                    debug_assert_eq!(model.len(), *n_model);
                    for i in 0..take {
                        rows.push(Row {
                            number: self.rows_read + 1 + i as u64,
                            model: model.iter().map(|c| c[i].clone()).collect(),
                            keep: keep.iter().map(|c| c[i].clone()).collect(),
                            unreadable: None,
                        });
                    }
                    *next += take;
                    self.rows_read += take as u64;
                    continue;
                }
            };
            self.rows_read += 1;
            rows.push(row);
        }
        Ok(rows)
    }
}

fn missing(name: &str, names: &[String]) -> BatchError {
    BatchError::MissingColumn { column: name.to_string(), what: "the model needs", columns: names.join(", ") }
}

fn missing_keep(name: &str, names: &[String]) -> BatchError {
    BatchError::MissingColumn { column: name.to_string(), what: "--keep names", columns: names.join(", ") }
}

/// A CSV cell as the JSON value a client would send for a column of type `kind`: text
/// stays text for character and factor columns (so "007" is a level, not the number 7);
/// numbers and logicals are read as R's `read.csv` reads them; an empty cell or `NA` is
/// missing. Text that is not what its column needs stays text, so the schema check names
/// it (row, column, value) as it would for an HTTP request.
fn csv_cell(text: &str, kind: Option<ColumnType>) -> Value {
    match kind {
        Some(ColumnType::Character) if text == "NA" => Value::Null,
        Some(ColumnType::Character) => Value::String(text.to_string()),
        _ if text.is_empty() || text == "NA" => Value::Null,
        Some(ColumnType::Factor | ColumnType::Ordered) => Value::String(text.to_string()),
        Some(ColumnType::Logical) => match text {
            "TRUE" | "true" | "True" | "T" => Value::Bool(true),
            "FALSE" | "false" | "False" | "F" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Some(ColumnType::Numeric | ColumnType::Integer) | None => {
            if let Ok(i) = text.parse::<i64>() {
                Value::from(i)
            } else if let Some(x) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Value::Number(x)
            } else {
                match (kind, text) {
                    (None, "TRUE" | "true") => Value::Bool(true),
                    (None, "FALSE" | "false") => Value::Bool(false),
                    _ => Value::String(text.to_string()),
                }
            }
        }
    }
}

/// One JSON Lines row: an object whose keys name columns (an absent key is missing, as in
/// an HTTP body). Anything else is an unreadable row.
fn json_row(number: u64, line: &str, model: &[String], keep: &[(String, KeepKind)]) -> Row {
    let unreadable = |message: String| Row {
        number,
        model: vec![Value::Null; model.len()],
        keep: vec![Value::Null; keep.len()],
        unreadable: Some(BadRow { row: number, column: String::new(), message }),
    };
    match serde_json::from_str::<Value>(line) {
        Err(e) => unreadable(format!("malformed JSON: {e}")),
        Ok(Value::Object(mut object)) => Row {
            number,
            model: model.iter().map(|c| object.get(c).cloned().unwrap_or(Value::Null)).collect(),
            keep: keep.iter().map(|(c, _)| object.remove(c).unwrap_or(Value::Null)).collect(),
            unreadable: None,
        },
        Ok(other) => {
            let mut shown = other.to_string();
            if shown.len() > 80 {
                let end = (0..=80).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
                shown.truncate(end);
                shown.push_str("...");
            }
            unreadable(format!("expected an object of column values, got {shown}"))
        }
    }
}

fn keep_kind(data_type: &DataType) -> KeepKind {
    match data_type {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => KeepKind::Float,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => KeepKind::Int,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => KeepKind::Int,
        DataType::Boolean => KeepKind::Bool,
        _ => KeepKind::Text,
    }
}

/// `take` cells of column `name` of `batch` from row `from`, as JSON values.
fn column_values(batch: &RecordBatch, name: &str, from: usize, take: usize) -> Result<Vec<Value>, BatchError> {
    let array = batch.column_by_name(name).expect("a projected column");
    array_values(&array.slice(from, take), name)
}

fn array_values(array: &dyn Array, name: &str) -> Result<Vec<Value>, BatchError> {
    fn each<T>(n: usize, array: &dyn Array, value: impl Fn(usize) -> T) -> Vec<Value>
    where
        Value: From<T>,
    {
        (0..n).map(|i| if array.is_null(i) { Value::Null } else { Value::from(value(i)) }).collect()
    }
    let n = array.len();
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match array.data_type() {
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { float(a.value(i)) }).collect()
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            (0..n).map(|i| if a.is_null(i) { Value::Null } else { float(f64::from(a.value(i))) }).collect()
        }
        DataType::Int8 => each(n, array, |i| array.as_primitive::<Int8Type>().value(i)),
        DataType::Int16 => each(n, array, |i| array.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => each(n, array, |i| array.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => each(n, array, |i| array.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => each(n, array, |i| array.as_primitive::<UInt8Type>().value(i)),
        DataType::UInt16 => each(n, array, |i| array.as_primitive::<UInt16Type>().value(i)),
        DataType::UInt32 => each(n, array, |i| array.as_primitive::<UInt32Type>().value(i)),
        DataType::UInt64 => each(n, array, |i| array.as_primitive::<UInt64Type>().value(i)),
        DataType::Boolean => each(n, array, |i| array.as_boolean().value(i)),
        DataType::Utf8 => each(n, array, |i| array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => each(n, array, |i| array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => each(n, array, |i| array.as_string_view().value(i).to_string()),
        DataType::Dictionary(_, _) => {
            // A factor as arrow writes one: its levels once, a key per row.
            let dictionary = array.as_any_dictionary();
            let levels = array_values(dictionary.values().as_ref(), name)?;
            let keys = dictionary.normalized_keys();
            (0..n).map(|i| if array.is_null(i) { Value::Null } else { levels[keys[i]].clone() }).collect()
        }
        other => return Err(BatchError::UnsupportedType { column: name.to_string(), data_type: other.to_string() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_are_what_a_client_would_send() {
        let check = |text: &str, kind: Option<ColumnType>, expected: Value| {
            assert_eq!(csv_cell(text, kind), expected, "{text:?} as {kind:?}");
        };
        check("2", Some(ColumnType::Numeric), json!(2));
        check("2.5", Some(ColumnType::Numeric), json!(2.5));
        check("", Some(ColumnType::Numeric), Value::Null);
        check("NA", Some(ColumnType::Integer), Value::Null);
        check("abc", Some(ColumnType::Numeric), json!("abc"));
        check("007", Some(ColumnType::Factor), json!("007"));
        check("", Some(ColumnType::Character), json!(""));
        check("NA", Some(ColumnType::Character), Value::Null);
        check("TRUE", Some(ColumnType::Logical), json!(true));
        check("F", Some(ColumnType::Logical), json!(false));
        check("yes", Some(ColumnType::Logical), json!("yes"));
        check("inf", Some(ColumnType::Numeric), json!("inf"));
    }
}
