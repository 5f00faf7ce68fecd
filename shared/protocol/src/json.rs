//! JSON bodies to and from frames, for the HTTP front and for JSON publishers.
//!
//! Accepted shapes (rows are what `jsonlite::toJSON(df)` writes; `NA` is `null` or an
//! absent key):
//! - `[{"col": value, ...}, ...]`: an array of row objects;
//! - `{"columns": ["a", ...], "data": [[...], ...]}`: pandas' split orientation
//!   (an `index` key is ignored);
//! - `{"data": <either of the above>}`: the wrapper Azure ML samples send.
//!
//! Column types are inferred from the values: integral numbers that fit make `i32`, other
//! numbers `f64`, strings `str`, booleans `bool`. The model's schema then decides (see
//! [`crate::conform`]).

use serde_json::{Map, Value};

use crate::frame::{Column, ColumnData, Frame};

/// Why a JSON body is not a table. Rows are 1-based.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum JsonError {
    #[error("malformed JSON: {0}")]
    Syntax(String),
    #[error("the body is empty")]
    Empty,
    #[error("no rows: the body holds an empty list of rows")]
    NoRows,
    #[error(
        "expected an array of row objects, {{\"columns\": [...], \"data\": [[...]]}} or {{\"data\": ...}}, got {0}"
    )]
    Shape(&'static str),
    #[error("row {row} is {got}, expected an object of column values")]
    RowNotObject { row: usize, got: &'static str },
    #[error("row {row} has {got} values but there are {expected} columns")]
    RowLength { row: usize, got: usize, expected: usize },
    #[error("\"columns\" must be an array of strings")]
    ColumnNames,
    #[error("column '{column}': row {row} holds {got}, expected a number, string, boolean or null")]
    Nested { column: String, row: usize, got: &'static str },
    #[error("column '{column}': row {row} holds {got} ({value}) but earlier rows hold {earlier}")]
    Mixed { column: String, row: usize, got: &'static str, value: String, earlier: &'static str },
}

/// Parses a request body into a frame.
pub fn frame_from_slice(body: &[u8]) -> Result<Frame, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(JsonError::Empty);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))?;
    frame_from_value(&value)
}

/// Turns a parsed body into a frame.
pub fn frame_from_value(value: &Value) -> Result<Frame, JsonError> {
    match value {
        Value::Array(rows) => from_row_objects(rows),
        Value::Object(object) if object.contains_key("columns") => from_split(object),
        Value::Object(object) if object.contains_key("data") => frame_from_value(&object["data"]),
        other => Err(JsonError::Shape(kind(other))),
    }
}

fn from_row_objects(rows: &[Value]) -> Result<Frame, JsonError> {
    if rows.is_empty() {
        return Err(JsonError::NoRows);
    }
    // Column order is the order of first appearance, as in the rows themselves.
    let mut builders: Vec<Builder> = Vec::new();
    let mut by_name: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (row, value) in rows.iter().enumerate() {
        let object: &Map<String, Value> =
            value.as_object().ok_or(JsonError::RowNotObject { row: row + 1, got: kind(value) })?;
        for (name, cell) in object {
            let index = *by_name.entry(name.clone()).or_insert_with(|| {
                builders.push(Builder::new(name.clone()));
                builders.len() - 1
            });
            builders[index].set(row, cell)?;
        }
    }
    finish(builders, rows.len())
}

fn from_split(object: &Map<String, Value>) -> Result<Frame, JsonError> {
    let names: Vec<String> = object["columns"]
        .as_array()
        .ok_or(JsonError::ColumnNames)?
        .iter()
        .map(|n| n.as_str().map(str::to_string).ok_or(JsonError::ColumnNames))
        .collect::<Result<_, _>>()?;
    let data = object.get("data").ok_or(JsonError::Shape("an object with \"columns\" but no \"data\""))?;
    let rows = data.as_array().ok_or(JsonError::Shape("\"data\" that is not an array of rows"))?;
    if rows.is_empty() {
        return Err(JsonError::NoRows);
    }
    let mut builders: Vec<Builder> = names.into_iter().map(Builder::new).collect();
    for (row, value) in rows.iter().enumerate() {
        let cells = value.as_array().ok_or(JsonError::RowNotObject { row: row + 1, got: kind(value) })?;
        if cells.len() != builders.len() {
            return Err(JsonError::RowLength { row: row + 1, got: cells.len(), expected: builders.len() });
        }
        for (builder, cell) in builders.iter_mut().zip(cells) {
            builder.set(row, cell)?;
        }
    }
    finish(builders, rows.len())
}

fn finish(builders: Vec<Builder>, n_rows: usize) -> Result<Frame, JsonError> {
    let columns = builders.into_iter().map(|b| b.finish(n_rows)).collect();
    Ok(Frame { n_rows, columns })
}

/// Collects one column's cells, remembering which kind of value it holds.
struct Builder {
    name: String,
    cells: Vec<(usize, Cell)>,
    kind: Option<&'static str>,
    all_i32: bool,
}

enum Cell {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl Builder {
    fn new(name: String) -> Self {
        Builder { name, cells: Vec::new(), kind: None, all_i32: true }
    }

    fn set(&mut self, row: usize, value: &Value) -> Result<(), JsonError> {
        let cell = match value {
            Value::Null => return Ok(()),
            Value::Number(n) => {
                let fits_i32 = n.as_i64().is_some_and(|i| i32::try_from(i).is_ok() && i != i32::MIN as i64);
                self.all_i32 &= fits_i32;
                Cell::Num(n.as_f64().unwrap_or(f64::NAN))
            }
            Value::String(s) => Cell::Str(s.clone()),
            Value::Bool(b) => Cell::Bool(*b),
            Value::Array(_) | Value::Object(_) => {
                return Err(JsonError::Nested { column: self.name.clone(), row: row + 1, got: kind(value) })
            }
        };
        let this = kind(value);
        match self.kind {
            Some(earlier) if earlier != this => {
                return Err(JsonError::Mixed {
                    column: self.name.clone(),
                    row: row + 1,
                    got: this,
                    value: value.to_string(),
                    earlier,
                })
            }
            _ => self.kind = Some(this),
        }
        self.cells.push((row, cell));
        Ok(())
    }

    fn finish(self, n_rows: usize) -> Column {
        fn fill<T: Clone>(n: usize, cells: impl Iterator<Item = (usize, T)>) -> Vec<Option<T>> {
            let mut values = vec![None; n];
            for (row, v) in cells {
                values[row] = Some(v);
            }
            values
        }
        let cells = self.cells.into_iter();
        let data = match self.kind {
            Some("a string") => ColumnData::Str {
                values: fill(n_rows, cells.map(|(r, c)| (r, if let Cell::Str(s) = c { s } else { unreachable!() }))),
            },
            Some("a boolean") => {
                ColumnData::Bool { values: fill(n_rows, cells.map(|(r, c)| (r, matches!(c, Cell::Bool(true))))) }
            }
            Some(_) if self.all_i32 => ColumnData::I32 {
                values: fill(n_rows, cells.map(|(r, c)| (r, if let Cell::Num(x) = c { x as i32 } else { 0 }))),
            },
            Some(_) => ColumnData::F64 {
                values: fill(n_rows, cells.map(|(r, c)| (r, if let Cell::Num(x) = c { x } else { f64::NAN }))),
            },
            // Only nulls: no type of its own (conform fits it to the schema).
            None => ColumnData::F64 { values: vec![None; n_rows] },
        };
        Column::new(self.name, data)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One column's values as JSON (`null` for missing values, factor labels as strings).
pub fn column_to_json(data: &ColumnData) -> Vec<Value> {
    fn map<T>(values: &[Option<T>], f: impl Fn(&T) -> Value) -> Vec<Value> {
        values.iter().map(|v| v.as_ref().map_or(Value::Null, &f)).collect()
    }
    match data {
        ColumnData::F64 { values } => {
            map(values, |x| serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number))
        }
        ColumnData::I32 { values } => map(values, |x| Value::from(*x)),
        ColumnData::Bool { values } => map(values, |x| Value::Bool(*x)),
        ColumnData::Str { values } => map(values, |x| Value::String(x.clone())),
        ColumnData::Factor { levels, values, .. } => map(values, |c| Value::String(levels[*c as usize].clone())),
    }
}

/// Predictions as the Azure ML convention answers them: a plain array for one column
/// (`[21.4, 19.7]`), an array of row objects for several (as `jsonlite::toJSON(df)`).
pub fn predictions_to_json(frame: &Frame) -> Value {
    if let [only] = frame.columns.as_slice() {
        return Value::Array(column_to_json(&only.data));
    }
    let columns: Vec<(&str, Vec<Value>)> =
        frame.columns.iter().map(|c| (c.name.as_str(), column_to_json(&c.data))).collect();
    let rows = (0..frame.n_rows)
        .map(|row| {
            let object: Map<String, Value> =
                columns.iter().map(|(name, values)| (name.to_string(), values[row].clone())).collect();
            Value::Object(object)
        })
        .collect();
    Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<Vec<Column>, &str>) {
        match (frame_from_slice(body.as_bytes()), expected) {
            (Ok(frame), Ok(columns)) => {
                frame.validate().unwrap();
                assert_eq!(frame.columns, columns, "body {body}")
            }
            (Err(e), Err(message)) => assert_eq!(e.to_string(), message, "body {body}"),
            (got, want) => panic!("body {body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn bodies() {
        use ColumnData::*;
        let rows = Ok(vec![
            Column::new("a", I32 { values: vec![Some(1), None] }),
            Column::new("b", F64 { values: vec![Some(2.5), Some(3.0)] }),
            Column::new("s", Str { values: vec![None, Some("x".into())] }),
        ]);
        check(r#"[{"a":1,"b":2.5},{"b":3,"s":"x","a":null}]"#, rows.clone());
        check(r#"{"columns":["a","b","s"],"data":[[1,2.5,null],[null,3,"x"]]}"#, rows.clone());
        check(r#"{"data":[{"a":1,"b":2.5},{"b":3,"s":"x"}]}"#, rows);
        check(
            r#"[{"t":true},{"t":false}]"#,
            Ok(vec![Column::new("t", Bool { values: vec![Some(true), Some(false)] })]),
        );
        check("", Err("the body is empty"));
        check("[]", Err("no rows: the body holds an empty list of rows"));
        check("[{\"a\":", Err("malformed JSON: EOF while parsing a value at line 1 column 6"));
        check("42", Err("expected an array of row objects, {\"columns\": [...], \"data\": [[...]]} or {\"data\": ...}, got a number"));
        check("[1]", Err("row 1 is a number, expected an object of column values"));
        check(r#"[{"a":1},{"a":"x"}]"#, Err("column 'a': row 2 holds a string (\"x\") but earlier rows hold a number"));
        check(r#"[{"a":[1]}]"#, Err("column 'a': row 1 holds an array, expected a number, string, boolean or null"));
        check(r#"{"columns":["a"],"data":[[1,2]]}"#, Err("row 1 has 2 values but there are 1 columns"));
    }

    #[test]
    fn predictions() {
        let one = Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: vec![Some(1.5), None] })]).unwrap();
        assert_eq!(predictions_to_json(&one).to_string(), "[1.5,null]");
        let two = Frame::new(vec![
            Column::new("a", ColumnData::F64 { values: vec![Some(0.25)] }),
            Column::new("b", ColumnData::Factor { levels: vec!["x".into()], values: vec![Some(0)], ordered: false }),
        ])
        .unwrap();
        assert_eq!(predictions_to_json(&two).to_string(), r#"[{"a":0.25,"b":"x"}]"#);
    }
}
