//! CSV (with a header) and Parquet readers producing a [`Dataset`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{cast::AsArray, types::Float32Type, Array};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::text::{csv_reader, delimiter_hint, parse_number, Delimiter, TextFormat};
use super::{DataError, Dataset};

/// File formats Segmenta reads, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Csv,
    Parquet,
}

impl TableFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }

    pub fn from_path(path: &Path) -> Result<Self, DataError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") | Some("txt") | Some("tsv") => Ok(Self::Csv),
            Some("parquet") | Some("pq") => Ok(Self::Parquet),
            _ => Err(DataError::UnknownFormat {
                path: path.to_owned(),
            }),
        }
    }
}

/// Bounds on what a read may hold, checked while reading (a server must
/// not parse a whole file only to find it too large).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Values (rows × chosen columns) held.
    pub max_values: usize,
    /// Columns chosen.
    pub max_columns: usize,
}

impl ReadLimits {
    pub const NONE: Self = Self {
        max_values: usize::MAX,
        max_columns: usize::MAX,
    };

    fn check_columns(&self, n: usize) -> Result<(), DataError> {
        if n > self.max_columns {
            return Err(DataError::TooLarge {
                limit: "max_features",
                what: format!("{n} columns"),
                max: self.max_columns as u64,
            });
        }
        Ok(())
    }

    fn check_values(&self, n: usize) -> Result<(), DataError> {
        if n > self.max_values {
            return Err(DataError::TooLarge {
                limit: "max_dataset_bytes",
                what: format!("more than {} bytes of values", 4 * self.max_values as u64),
                max: 4 * self.max_values as u64,
            });
        }
        Ok(())
    }
}

/// Reads the chosen columns (all columns when `columns` is empty) as f32.
pub fn read_table(path: &Path, columns: &[String]) -> Result<Dataset, DataError> {
    read_table_limited(path, columns, &TextFormat::default(), ReadLimits::NONE)
}

/// [`read_table`] for text written as `format` says (Parquet ignores it),
/// stopping as soon as the data would pass `limits`.
pub fn read_table_limited(
    path: &Path,
    columns: &[String],
    format: &TextFormat,
    limits: ReadLimits,
) -> Result<Dataset, DataError> {
    let text = format;
    let format = TableFormat::from_path(path)?;
    let file = File::open(path).map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    let (names, flat) = match format {
        TableFormat::Csv => read_csv(file, path, columns, text, limits)?,
        TableFormat::Parquet => super::guard_parquet(
            || read_parquet(file, path, columns, limits),
            || super::damaged_parquet(path),
        )?,
    };
    Dataset::from_rows(names, flat)
}

/// The first name in `names` that an earlier one repeats.
pub fn first_repeated(names: &[String]) -> Option<&String> {
    let mut seen = HashSet::with_capacity(names.len());
    names.iter().find(|name| !seen.insert(name.as_str()))
}

/// A header's names joined for a message, with control characters
/// escaped: a file that is not text (or a hostile one) must not write
/// escape sequences to a terminal or raw bytes into a status.
pub fn shown_names(header: &[String]) -> String {
    let escaped = |name: &String| -> String {
        name.chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect()
    };
    header.iter().map(escaped).collect::<Vec<_>>().join(", ")
}

/// Maps requested column names to positions in the header (all columns when
/// `wanted` is empty); an unknown name is an error listing the available
/// ones. A name is an error too where it could mean two columns: asked
/// for twice, or (asked for, or all columns taken) named twice in the
/// header. Taking all columns is an error where one has no name.
pub fn resolve_columns(header: &[String], wanted: &[String]) -> Result<Vec<usize>, DataError> {
    let repeated = |name: &String| DataError::RepeatedColumn { name: name.clone() };
    // Nothing, or one blank line: `,,` is a header of unnamed columns.
    if header.is_empty() || header == [""] {
        return Err(DataError::NoHeader);
    }
    if wanted.is_empty() {
        if let Some(j) = header.iter().position(String::is_empty) {
            return Err(DataError::UnnamedColumn { position: j + 1 });
        }
        return match first_repeated(header) {
            Some(name) => Err(repeated(name)),
            None => Ok((0..header.len()).collect()),
        };
    }
    if let Some(name) = first_repeated(wanted) {
        return Err(repeated(name));
    }
    // Each header name's position; `None` where the header names it twice.
    let mut at: HashMap<&str, Option<usize>> = HashMap::with_capacity(header.len());
    for (j, name) in header.iter().enumerate() {
        at.entry(name).and_modify(|p| *p = None).or_insert(Some(j));
    }
    wanted
        .iter()
        .map(|name| match at.get(name.as_str()) {
            Some(&Some(j)) => Ok(j),
            Some(None) => Err(repeated(name)),
            None => Err(DataError::UnknownColumn {
                name: name.clone(),
                available: shown_names(header),
                hint: String::new(),
            }),
        })
        .collect()
}

fn read_csv(
    file: File,
    path: &Path,
    wanted: &[String],
    format: &TextFormat,
    limits: ReadLimits,
) -> Result<(Vec<String>, Vec<f32>), DataError> {
    let malformed = |e: csv::Error| DataError::Malformed {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let (mut reader, delimiter) = csv_reader(
        std::io::BufReader::with_capacity(1 << 20, file),
        format,
        false,
    )
    .map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    let header: Vec<String> = reader
        .headers()
        .map_err(malformed)?
        .iter()
        .map(str::to_owned)
        .collect();
    let picks =
        resolve_columns(&header, wanted).map_err(|e| with_delimiter_hint(e, &header, delimiter))?;
    limits.check_columns(picks.len())?;
    let mut flat = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut row = 0;
    while reader.read_record(&mut record).map_err(malformed)? {
        row += 1;
        limits.check_values(flat.len() + picks.len())?;
        for &c in &picks {
            let text = record.get(c).unwrap_or("");
            // NaN and infinities parse, so validation names them as such.
            let literal = text.trim().parse::<f32>().ok().filter(|v| !v.is_finite());
            let value = literal
                .or_else(|| parse_number(text, format.decimal_comma).map(|v| v as f32))
                .filter(|v| !v.is_infinite() || literal.is_some())
                .ok_or_else(|| DataError::NotNumeric {
                    column: header[c].clone(),
                    row,
                    value: text.to_owned(),
                    hint: number_hint(text, format.decimal_comma),
                })?;
            flat.push(value);
        }
    }
    let names = picks.iter().map(|&c| header[c].clone()).collect();
    Ok((names, flat))
}

/// One column as text (ids, names), in row order: a CSV field as written,
/// a Parquet value cast to text; nulls are empty.
pub fn read_text_column(
    path: &Path,
    column: &str,
    format: &TextFormat,
) -> Result<Vec<String>, DataError> {
    let table = TableFormat::from_path(path)?;
    let file = File::open(path).map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    let wanted = [column.to_owned()];
    let mut out = Vec::new();
    match table {
        TableFormat::Csv => {
            let (mut reader, delimiter) = csv_reader(std::io::BufReader::new(file), format, false)
                .map_err(|error| DataError::Io {
                    path: path.to_owned(),
                    error,
                })?;
            let malformed = |e: csv::Error| DataError::Malformed {
                path: path.to_owned(),
                message: e.to_string(),
            };
            let header: Vec<String> = reader
                .headers()
                .map_err(malformed)?
                .iter()
                .map(str::to_owned)
                .collect();
            let c = resolve_columns(&header, &wanted)
                .map_err(|e| with_delimiter_hint(e, &header, delimiter))?[0];
            for record in reader.records() {
                out.push(record.map_err(malformed)?.get(c).unwrap_or("").to_owned());
            }
        }
        TableFormat::Parquet => super::guard_parquet(
            || -> Result<(), DataError> {
                let malformed = |message: String| DataError::Malformed {
                    path: path.to_owned(),
                    message,
                };
                let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| malformed(e.to_string()))?;
                let header: Vec<String> = builder
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().trim().to_owned())
                    .collect();
                let c = resolve_columns(&header, &wanted)?[0];
                for batch in builder.build().map_err(|e| malformed(e.to_string()))? {
                    let batch = batch.map_err(|e| malformed(e.to_string()))?;
                    let text = arrow_cast::cast(batch.column(c), &DataType::Utf8)
                        .map_err(|e| malformed(e.to_string()))?;
                    let text = text.as_string::<i32>();
                    out.extend((0..text.len()).map(|i| {
                        if text.is_null(i) {
                            String::new()
                        } else {
                            text.value(i).to_owned()
                        }
                    }));
                }
                Ok(())
            },
            || super::damaged_parquet(path),
        )?,
    }
    Ok(out)
}

/// An unknown column in a header that did not split gets the delimiter
/// that would split it.
pub fn with_delimiter_hint(e: DataError, header: &[String], used: Delimiter) -> DataError {
    match (e, delimiter_hint(header, used)) {
        (
            DataError::UnknownColumn {
                name, available, ..
            },
            Some(h),
        ) => DataError::UnknownColumn {
            name,
            available,
            hint: format!("; {h}"),
        },
        (e, _) => e,
    }
}

/// What would make `text` a number: the other decimal separator.
pub fn number_hint(text: &str, decimal_comma: bool) -> String {
    if parse_number(text, !decimal_comma).is_some() {
        if decimal_comma {
            " (drop --decimal-comma: it reads as a number with a decimal point)".into()
        } else {
            " (pass --decimal-comma: it reads as a number with a decimal comma)".into()
        }
    } else {
        String::new()
    }
}

fn read_parquet(
    file: File,
    path: &Path,
    wanted: &[String],
    limits: ReadLimits,
) -> Result<(Vec<String>, Vec<f32>), DataError> {
    let malformed = |message: String| DataError::Malformed {
        path: PathBuf::from(path),
        message,
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| malformed(e.to_string()))?;
    let schema = builder.schema().clone();
    // Trimmed as CSV headers are, so a name is asked for the same way
    // whatever the format ("Revenue " from a spreadsheet is "Revenue").
    let header: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().trim().to_owned())
        .collect();
    let picks = resolve_columns(&header, wanted)?;
    limits.check_columns(picks.len())?;
    for &c in &picks {
        let dtype = schema.field(c).data_type();
        if !dtype.is_numeric() {
            return Err(DataError::NonNumericColumn {
                column: header[c].clone(),
                dtype: dtype.to_string(),
            });
        }
    }
    let width = picks.len();
    // The row count is known before the read: the values go into one
    // buffer of that size (huge pages where large, as a fit's working copy
    // has; no doubling as it grows). A count over the limits is left to
    // the read itself to report, as is one the file does not hold.
    let expected = usize::try_from(builder.metadata().file_metadata().num_rows())
        .ok()
        .and_then(|rows| rows.checked_mul(width))
        .filter(|&n| limits.check_values(n).is_ok());
    let mut flat: Vec<f32> = expected.map_or_else(Vec::new, super::pages::try_with_capacity);
    let reader = builder
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| malformed(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| malformed(e.to_string()))?;
        let start = flat.len();
        limits.check_values(start + batch.num_rows() * width)?;
        flat.resize(start + batch.num_rows() * width, 0.0);
        for (slot, &c) in picks.iter().enumerate() {
            let column = arrow_cast::cast(batch.column(c), &DataType::Float32)
                .map_err(|e| malformed(format!("column {:?}: {e}", header[c])))?;
            let values = column.as_primitive::<Float32Type>();
            for (i, v) in values.iter().enumerate() {
                // Nulls become NaN so validation reports their row and column.
                flat[start + i * width + slot] = v.unwrap_or(f32::NAN);
            }
            debug_assert_eq!(values.len(), batch.num_rows());
            let _ = values.null_count();
        }
    }
    if expected != Some(flat.len()) {
        // The metadata overstated the rows: give back the room not filled.
        flat.shrink_to_fit();
    }
    let names = picks.iter().map(|&c| header[c].clone()).collect();
    Ok((names, flat))
}
