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
///
/// An array of row objects, the common shape, is read straight into columns without a
/// `Value` per row (a third of the time of a 10,000-row body). Any body that path does
/// not take cleanly, bad ones included, is parsed again into a `Value` and read by
/// [`frame_from_value`], so every answer, each error message included, is that function's.
pub fn frame_from_slice(body: &[u8]) -> Result<Frame, JsonError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(JsonError::Empty),
        Some(b'[') => {
            if let Some(frame) = stream::rows(body) {
                return Ok(frame);
            }
        }
        Some(_) => {}
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

impl Cell {
    /// As [`kind`] names it.
    fn kind(&self) -> &'static str {
        match self {
            Cell::Num(_) => "a number",
            Cell::Str(_) => "a string",
            Cell::Bool(_) => "a boolean",
        }
    }
}

/// Whether a JSON integer makes an `i32` cell (R's NA_integer_ is i32::MIN).
fn fits_i32(i: i64) -> bool {
    i32::try_from(i).is_ok() && i != i32::MIN as i64
}

/// The array-of-row-objects body read straight into column builders.
mod stream {
    use std::collections::HashMap;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    use super::{finish, Builder, Cell, Frame};

    /// The frame, or `None` for anything but a well-formed, non-empty array of row
    /// objects whose cells are scalars of one kind per column and whose rows name each
    /// column at most once; the caller then takes the `Value` path.
    pub(super) fn rows(body: &[u8]) -> Option<Frame> {
        let mut columns = Columns { builders: Vec::new(), by_name: HashMap::new(), last_row: Vec::new() };
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let n_rows = (&mut deserializer).deserialize_seq(RowsVisitor(&mut columns)).ok()?;
        deserializer.end().ok()?;
        if n_rows == 0 {
            return None;
        }
        finish(columns.builders, n_rows).ok()
    }

    struct Columns {
        builders: Vec<Builder>,
        by_name: HashMap<String, usize>,
        /// The last row that set each column: a row naming a column twice leaves the stream.
        last_row: Vec<usize>,
    }

    impl Columns {
        fn index(&mut self, name: &str) -> usize {
            if let Some(&index) = self.by_name.get(name) {
                return index;
            }
            self.builders.push(Builder::new(name.to_string()));
            self.last_row.push(usize::MAX);
            self.by_name.insert(name.to_string(), self.builders.len() - 1);
            self.builders.len() - 1
        }
    }

    /// Anything the stream does not take; the message is never shown.
    fn leave<E: Error>() -> E {
        E::custom("not a plain table")
    }

    struct RowsVisitor<'c>(&'c mut Columns);

    impl<'de> Visitor<'de> for RowsVisitor<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of row objects")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut row = 0;
            while seq.next_element_seed(RowSeed { columns: &mut *self.0, row })?.is_some() {
                row += 1;
            }
            Ok(row)
        }
    }

    struct RowSeed<'c> {
        columns: &'c mut Columns,
        row: usize,
    }

    impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for RowSeed<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a row object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(index) = map.next_key_seed(KeySeed(&mut *self.columns))? {
                if self.columns.last_row[index] == self.row {
                    return Err(leave());
                }
                self.columns.last_row[index] = self.row;
                let builder = &mut self.columns.builders[index];
                map.next_value_seed(CellSeed { builder, row: self.row })?;
            }
            Ok(())
        }
    }

    /// A key: the index of its column, made on first sight.
    struct KeySeed<'c>(&'c mut Columns);

    impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
        type Value = usize;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for KeySeed<'_> {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a column name")
        }

        fn visit_str<E: Error>(self, name: &str) -> Result<usize, E> {
            Ok(self.0.index(name))
        }
    }

    struct CellSeed<'b> {
        builder: &'b mut Builder,
        row: usize,
    }

    impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl CellSeed<'_> {
        fn push<E: Error>(self, cell: Cell, fits_i32: bool) -> Result<(), E> {
            self.builder.push(self.row, cell, fits_i32).map_err(|_| leave())
        }
    }

    impl<'de> Visitor<'de> for CellSeed<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, string, boolean or null")
        }

        fn visit_unit<E: Error>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_bool<E: Error>(self, b: bool) -> Result<(), E> {
            self.push(Cell::Bool(b), false)
        }

        fn visit_i64<E: Error>(self, i: i64) -> Result<(), E> {
            self.push(Cell::Num(i as f64), super::fits_i32(i))
        }

        fn visit_u64<E: Error>(self, u: u64) -> Result<(), E> {
            self.push(Cell::Num(u as f64), i64::try_from(u).is_ok_and(super::fits_i32))
        }

        fn visit_f64<E: Error>(self, x: f64) -> Result<(), E> {
            self.push(Cell::Num(x), false)
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<(), E> {
            self.push(Cell::Str(s.to_string()), false)
        }

        fn visit_string<E: Error>(self, s: String) -> Result<(), E> {
            self.push(Cell::Str(s), false)
        }
    }
}

impl Builder {
    fn new(name: String) -> Self {
        Builder { name, cells: Vec::new(), kind: None, all_i32: true }
    }

    fn set(&mut self, row: usize, value: &Value) -> Result<(), JsonError> {
        let (cell, fits_i32) = match value {
            Value::Null => return Ok(()),
            Value::Number(n) => (Cell::Num(n.as_f64().unwrap_or(f64::NAN)), n.as_i64().is_some_and(fits_i32)),
            Value::String(s) => (Cell::Str(s.clone()), false),
            Value::Bool(b) => (Cell::Bool(*b), false),
            Value::Array(_) | Value::Object(_) => {
                return Err(JsonError::Nested { column: self.name.clone(), row: row + 1, got: kind(value) })
            }
        };
        self.push(row, cell, fits_i32).map_err(|earlier| JsonError::Mixed {
            column: self.name.clone(),
            row: row + 1,
            got: kind(value),
            value: value.to_string(),
            earlier,
        })
    }

    /// Adds a non-null cell, or answers the kind the column held before when this one's
    /// differs.
    fn push(&mut self, row: usize, cell: Cell, fits_i32: bool) -> Result<(), &'static str> {
        let this = cell.kind();
        match self.kind {
            Some(earlier) if earlier != this => return Err(earlier),
            _ => self.kind = Some(this),
        }
        if let Cell::Num(_) = cell {
            self.all_i32 &= fits_i32;
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

    /// The streamed path answers exactly what the `Value` path does, or leaves the body
    /// to it.
    #[test]
    fn streamed_rows_match_values() {
        let same = [
            r#"[{"a":1,"b":2.5},{"b":3,"s":"x","a":null}]"#,
            r#"[{"i":2147483647},{"i":-2147483647}]"#,
            r#"[{"i":-2147483648}]"#,
            r#"[{"i":2147483648},{"i":1}]"#,
            r#"[{"u":18446744073709551615},{"u":-9223372036854775808}]"#,
            r#"[{"x":1.0},{"x":2}]"#,
            r#"[{"x":1e3},{"x":-0}]"#,
            r#" [ {"t":true} , {"t":false}, {} ] "#,
            r#"[{"n":null},{"n":null}]"#,
            r#"[{"k\"ey\u00e9":"v\n\u2603"},{"z":"","k\"ey\u00e9":"w"}]"#,
            r#"[{"b":1,"a":2},{"a":3,"c":"x","b":4}]"#,
        ];
        for body in same {
            let streamed = stream::rows(body.as_bytes()).unwrap_or_else(|| panic!("{body} left the stream"));
            let value = frame_from_value(&serde_json::from_slice(body.as_bytes()).unwrap()).unwrap();
            assert_eq!(streamed, value, "{body}");
            assert_eq!(frame_from_slice(body.as_bytes()).unwrap(), value, "{body}");
        }
        let left = [
            "[]",
            "[1]",
            r#"[{"a":1},{"a":"x"}]"#,
            r#"[{"a":[1]}]"#,
            r#"[{"a":{"b":1}}]"#,
            r#"[{"a":1.5,"a":2}]"#,
            r#"[{"a":1}] x"#,
            r#"[{"a":1},"#,
            r#"{"data":[{"a":1}]}"#,
        ];
        for body in left {
            assert!(stream::rows(body.as_bytes()).is_none(), "{body} should leave the stream");
        }
        // A column named twice in a row: the last value wins, as in the `Value` path.
        let twice = frame_from_slice(br#"[{"a":1.5,"a":2}]"#).unwrap();
        assert_eq!(twice.columns, vec![Column::new("a", ColumnData::I32 { values: vec![Some(2)] })]);
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
