//! Reading ticks to replay from JSON lines or CSV (a header row of field names).
//!
//! A record may name its topic in a `topic` field or column; otherwise the replay's
//! `--topic` applies. The other fields are the schema's, by name.
//!
//! Both formats are read strictly, so a file cannot mean one thing here and another to the
//! next reader: a JSON line that gives a key twice (at any depth) or a number no 64-bit
//! float holds (`1e400`), and a CSV header that names a column twice, are errors naming the
//! file, the line and the field. CSV cells are text; [`super::encode`] refuses text that
//! is not a finite number where the schema wants one.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

/// File formats replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
}

impl Format {
    /// The format a file name suggests: `.csv` is CSV, anything else JSON lines.
    pub fn for_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// One record to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the file.
    pub line: u64,
    /// The topic the record names, if any.
    pub topic: Option<String>,
    /// The schema fields.
    pub fields: Map<String, Json>,
}

/// A line that cannot be read, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ReplayError {
    /// The file.
    pub file: String,
    /// The 1-based line.
    pub line: u64,
    /// What is wrong (naming the field where one is at fault).
    pub message: String,
}

/// Reads `path` record by record.
pub struct Reader {
    path: PathBuf,
    inner: Inner,
}

enum Inner {
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        line: u64,
    },
    Csv {
        records: csv::StringRecordsIntoIter<File>,
        headers: Vec<String>,
    },
}

impl Reader {
    /// Opens `path` in `format`.
    pub fn open(path: &Path, format: Format) -> anyhow::Result<Self> {
        let file =
            File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let inner = match format {
            Format::Jsonl => Inner::Jsonl {
                lines: BufReader::new(file).lines(),
                line: 0,
            },
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .trim(csv::Trim::All)
                    .from_reader(file);
                let headers = reader
                    .headers()
                    .map_err(|e| {
                        anyhow::anyhow!("{}:1: cannot read the CSV header: {e}", path.display())
                    })?
                    .iter()
                    .map(str::to_string)
                    .collect::<Vec<_>>();
                if let Some(message) = duplicate_column(&headers) {
                    return Err(ReplayError {
                        file: path.display().to_string(),
                        line: 1,
                        message,
                    }
                    .into());
                }
                Inner::Csv {
                    records: reader.into_records(),
                    headers,
                }
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// An error at `line` of this file: one of the reader's own, or one found later in a
    /// record read from it (a field that does not encode).
    pub fn error(&self, line: u64, message: String) -> ReplayError {
        ReplayError {
            file: self.path.display().to_string(),
            line,
            message,
        }
    }

    /// The next record, `None` at the end of the file.
    pub fn next_record(&mut self) -> Option<Result<Record, ReplayError>> {
        match &mut self.inner {
            Inner::Jsonl { lines, line } => loop {
                *line += 1;
                let n = *line;
                let text = match lines.next()? {
                    Ok(t) => t,
                    Err(e) => return Some(Err(self.error(n, format!("cannot read: {e}")))),
                };
                if text.trim().is_empty() {
                    continue;
                }
                return Some(match crate::json::from_str(&text) {
                    Ok(Json::Object(mut fields)) => {
                        let topic = match fields.remove("topic") {
                            None | Some(Json::Null) => None,
                            Some(Json::String(t)) => Some(t),
                            Some(other) => {
                                return Some(Err(self.error(
                                    n,
                                    format!("field `topic` must be text, found {other}"),
                                )));
                            }
                        };
                        Ok(Record {
                            line: n,
                            topic,
                            fields,
                        })
                    }
                    Ok(other) => {
                        Err(self.error(n, format!("expected a JSON object, found {other}")))
                    }
                    Err(e) => Err(self.error(n, format!("invalid JSON: {}", e.in_line()))),
                });
            },
            Inner::Csv { records, headers } => {
                let result = records.next()?;
                Some(match result {
                    Ok(row) => {
                        let line = row.position().map_or(0, |p| p.line());
                        if row.len() != headers.len() {
                            let (got, want) = (row.len(), headers.len());
                            return Some(Err(self.error(
                                line,
                                format!("{got} columns, but the header has {want}"),
                            )));
                        }
                        let mut fields = Map::new();
                        let mut topic = None;
                        for (name, cell) in headers.iter().zip(row.iter()) {
                            if name == "topic" {
                                topic = (!cell.is_empty()).then(|| cell.to_string());
                            } else {
                                fields.insert(name.clone(), Json::String(cell.to_string()));
                            }
                        }
                        Ok(Record {
                            line,
                            topic,
                            fields,
                        })
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line());
                        Err(self.error(line, format!("invalid CSV: {e}")))
                    }
                })
            }
        }
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A column the header names twice (names are trimmed and compared exactly), described.
fn duplicate_column(headers: &[String]) -> Option<String> {
    let mut seen = std::collections::HashMap::new();
    for (i, name) in headers.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), i) {
            return Some(format!(
                "the CSV header names the column `{name}` twice (columns {} and {}); each column must have a name of its own",
                first + 1,
                i + 1
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jsonl_and_csv_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("t.jsonl");
        std::fs::write(
            &jsonl,
            "{\"topic\":\"tickers.stocks\",\"id\":\"AAPL\",\"price\":1.5}\n\n{\"id\":\"MSFT\"}\nnope\n",
        )
        .unwrap();
        let mut r = Reader::open(&jsonl, Format::for_path(&jsonl)).unwrap();
        let first = r.next_record().unwrap().unwrap();
        assert_eq!(first.line, 1);
        assert_eq!(first.topic.as_deref(), Some("tickers.stocks"));
        assert_eq!(first.fields["price"], 1.5);
        let second = r.next_record().unwrap().unwrap();
        assert_eq!((second.line, second.topic), (3, None));
        let err = r.next_record().unwrap().unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.to_string().contains("t.jsonl:4: invalid JSON"), "{err}");
        assert!(r.next_record().is_none());

        let csv = dir.path().join("t.csv");
        std::fs::write(
            &csv,
            "topic,id,price\ntickers.crypto,BTC-USD,64000.5\n,ETH-USD\n",
        )
        .unwrap();
        let mut r = Reader::open(&csv, Format::for_path(&csv)).unwrap();
        let first = r.next_record().unwrap().unwrap();
        assert_eq!(
            (first.line, first.topic.as_deref()),
            (2, Some("tickers.crypto"))
        );
        assert_eq!(first.fields["price"], "64000.5");
        let err = r.next_record().unwrap().unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.message.contains("2 columns, but the header has 3")
                || err.message.contains("invalid CSV"),
            "{err}"
        );
    }

    /// The first record's error from a JSON lines file holding `lines`.
    fn jsonl_error(dir: &Path, lines: &str) -> String {
        let file = dir.join("t.jsonl");
        std::fs::write(&file, lines).unwrap();
        let mut r = Reader::open(&file, Format::Jsonl).unwrap();
        r.next_record().unwrap().unwrap_err().to_string()
    }

    #[test]
    fn jsonl_refuses_duplicate_keys_and_numbers_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.jsonl");
        let at = |line: u64| format!("{}:{line}: invalid JSON: ", file.display());
        assert_eq!(
            jsonl_error(
                dir.path(),
                "\n{\"id\":\"AAPL\",\"price\":1.5,\"price\":2}\n"
            ),
            format!(
                "{}the key \"price\" appears twice in one object (column 32)",
                at(2)
            )
        );
        assert_eq!(
            jsonl_error(dir.path(), r#"{"id":"AAPL","quote":{"bid":1,"bid":2}}"#),
            format!(
                "{}field `quote`: the key \"bid\" appears twice in one object (column 35)",
                at(1)
            )
        );
        assert_eq!(
            jsonl_error(dir.path(), r#"{"id":"AAPL","price":1e400}"#),
            format!(
                "{}field `price`: the number 1e400 is out of range for a 64-bit float (column 26)",
                at(1)
            )
        );
    }

    #[test]
    fn csv_refuses_a_column_named_twice() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "topic,id, price ,bid,price\nt,AAPL,1,2,3\n").unwrap();
        let err = Reader::open(&csv, Format::Csv).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{}:1: the CSV header names the column `price` twice (columns 3 and 5); each column must have a name of its own",
                csv.display()
            )
        );
        // Names differing in case are different columns.
        std::fs::write(&csv, "id,price,Price\nAAPL,1,2\n").unwrap();
        let mut r = Reader::open(&csv, Format::Csv).unwrap();
        let record = r.next_record().unwrap().unwrap();
        assert_eq!(
            (
                record.fields["price"].as_str(),
                record.fields["Price"].as_str()
            ),
            (Some("1"), Some("2"))
        );
    }

    #[test]
    fn csv_cells_that_are_not_finite_numbers_are_refused_at_their_line() {
        use crate::ingest::encode::Encoder;
        use crate::registry::{RegisteredSchema, SchemaId};
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"tick","fields":[
                {"name":"id","type":"string"},{"name":"price","type":"double"}]}"#,
        )
        .unwrap();
        let mut encoder = Encoder::new(&RegisteredSchema {
            id: SchemaId(1),
            text: String::new(),
            schema,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("t.csv");
        std::fs::write(
            &csv,
            "id,price\nA,1.5\nB,1e400\nC, inf\nD,NaN\nE,-Infinity\n",
        )
        .unwrap();
        let mut r = Reader::open(&csv, Format::Csv).unwrap();
        let mut errors = Vec::new();
        while let Some(record) = r.next_record() {
            let record = record.unwrap();
            if let Err(e) = encoder.encode(&record.fields) {
                errors.push(r.error(record.line, e).to_string());
            }
        }
        let at = |line: u64, text: &str| {
            format!(
                "{}:{line}: field `price`: {text} is not a finite number",
                csv.display()
            )
        };
        assert_eq!(
            errors,
            [
                at(3, "1e400"),
                at(4, "inf"),
                at(5, "NaN"),
                at(6, "-Infinity")
            ]
        );
    }
}
