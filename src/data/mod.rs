//! Loading tables into an `n × d` row-major f32 matrix, validating them, and
//! scaling features.

mod error;
mod matrix;
mod reader;
mod scaler;
pub mod text;

pub use error::DataError;
pub use matrix::{check_finite, Dataset};
pub use reader::{
    number_hint, read_table, read_table_limited, read_text_column, resolve_columns,
    with_delimiter_hint, ReadLimits, TableFormat,
};
pub use scaler::{ColumnStats, Scaler};
pub use text::{Delimiter, TextFormat};
