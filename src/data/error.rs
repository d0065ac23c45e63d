use std::path::PathBuf;

/// Problems with input data. Rows and columns are reported 1-based for rows
/// (as a spreadsheet shows them, header excluded) and by name for columns.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The io error is in the message, not a `source`: printed with its
    /// chain, it would say "No such file or directory" twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: unsupported file type (expected .csv, .tsv, .txt or .parquet)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    /// `hint` is empty or starts with "; ".
    #[error("unknown column {name:?}; available columns: {available}{hint}")]
    UnknownColumn {
        name: String,
        available: String,
        hint: String,
    },
    /// A column asked for twice would silently count twice in distances.
    #[error("column {name:?} is named more than once")]
    RepeatedColumn { name: String },
    /// `hint` is empty or starts with a space.
    #[error("column {column:?}, row {row}: {value:?} is not a number{hint}")]
    NotNumeric {
        column: String,
        row: usize,
        value: String,
        hint: String,
    },
    /// An empty header name (a spreadsheet's index column, say) cannot be
    /// asked for by name or shown in a profile; taking every column would
    /// take it silently. `position` counts from 1.
    #[error("column {position} of the header has no name: name it, or choose the columns to use")]
    UnnamedColumn { position: usize },
    #[error("column {column:?} has type {dtype}, which is not numeric")]
    NonNumericColumn { column: String, dtype: String },
    #[error("the data has no rows")]
    NoRows,
    /// A file of zero bytes (or a blank first line): without this, the
    /// first column asked for would be "unknown" among no columns.
    #[error("the file is empty: no header row")]
    NoHeader,
    #[error("the data has no columns")]
    NoColumns,
    #[error("non-finite value ({value}) at row {row}, column {column:?}")]
    NotFinite {
        row: usize,
        column: String,
        value: f32,
    },
    /// A read stopped at a size limit before holding the whole file.
    #[error("{what} exceeds the limit {limit} ({max})")]
    TooLarge {
        limit: &'static str,
        what: String,
        max: u64,
    },
    #[error("shape mismatch: {n_values} values do not fill rows of width {width}")]
    Shape { n_values: usize, width: usize },
}
