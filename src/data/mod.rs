//! Loading tables into an `n × d` row-major f32 matrix, validating them, and
//! scaling features.

mod error;
mod matrix;
pub mod pages;
mod reader;
mod scaler;
pub mod text;

pub use error::DataError;
pub use matrix::{check_finite, Dataset};
pub use reader::{
    first_repeated, number_hint, read_table, read_table_limited, read_text_column, resolve_columns,
    shown_names, with_delimiter_hint, ReadLimits, TableFormat,
};
pub use scaler::{ColumnStats, Scaler};
pub use text::{Delimiter, TextFormat};

/// Runs a Parquet read and turns a panic inside the parquet crate (it still
/// has a few on damaged files) into `on_panic()`'s error: a damaged file is
/// bad input, and must never take a thread down.
pub fn guard_parquet<T, E>(
    read: impl FnOnce() -> Result<T, E>,
    on_panic: impl FnOnce() -> E,
) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| Err(on_panic()))
}

/// The error for a Parquet file the reader gave up on.
pub(crate) fn damaged_parquet(path: &std::path::Path) -> DataError {
    DataError::Malformed {
        path: path.to_owned(),
        message: "the Parquet file is damaged (its metadata could not be read)".into(),
    }
}
