use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::DataError;

/// A numeric table: `n × d` f32, row-major, with column names.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub columns: Vec<String>,
    pub values: Array2<f32>,
}

impl Dataset {
    /// Builds a dataset, checking that it is non-empty and finite.
    pub fn new(columns: Vec<String>, values: Array2<f32>) -> Result<Self, DataError> {
        if values.ncols() == 0 || columns.is_empty() {
            return Err(DataError::NoColumns);
        }
        if values.ncols() != columns.len() {
            return Err(DataError::Shape {
                n_values: values.len(),
                width: columns.len(),
            });
        }
        check_finite(values.view(), &columns)?;
        Ok(Self { columns, values })
    }

    /// Builds a dataset from a flat row-major buffer.
    pub fn from_rows(columns: Vec<String>, flat: Vec<f32>) -> Result<Self, DataError> {
        let width = columns.len();
        if width == 0 {
            return Err(DataError::NoColumns);
        }
        if !flat.len().is_multiple_of(width) {
            return Err(DataError::Shape {
                n_values: flat.len(),
                width,
            });
        }
        let values = Array2::from_shape_vec((flat.len() / width, width), flat)
            .expect("length checked to be a multiple of the width");
        Self::new(columns, values)
    }

    /// The named columns (all when `wanted` is empty), as a new matrix.
    pub fn select_columns(
        &self,
        wanted: &[String],
    ) -> Result<(Array2<f32>, Vec<String>), DataError> {
        let idx = super::resolve_columns(&self.columns, wanted)?;
        Ok((gather(self.values.view(), &idx), self.names_at(&idx)))
    }

    fn names_at(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&j| self.columns[j].clone()).collect()
    }

    /// [`select_columns`](Self::select_columns) without a second copy of
    /// the data: each row's chosen values are moved to the front of the
    /// same buffer (row `r`'s new place never overlaps a later row's
    /// values, so one pass in row order suffices). A service fit of a
    /// stored dataset then holds its rows once, not twice.
    pub fn into_columns(self, wanted: &[String]) -> Result<(Array2<f32>, Vec<String>), DataError> {
        let idx = super::resolve_columns(&self.columns, wanted)?;
        Ok(self.into_columns_at(&idx))
    }

    /// [`into_columns`](Self::into_columns) by position (each below the
    /// number of columns).
    pub fn into_columns_at(self, idx: &[usize]) -> (Array2<f32>, Vec<String>) {
        let names = self.names_at(idx);
        let (n, d) = self.values.dim();
        let k = idx.len();
        let mut seen = vec![false; d];
        let distinct = idx.iter().all(|&j| !std::mem::replace(&mut seen[j], true));
        if !self.values.is_standard_layout() || !distinct {
            // Not a row-major buffer to move values within, or more values
            // a row than it holds: copy.
            return (gather(self.values.view(), idx), names);
        }
        if idx.iter().copied().eq(0..d) {
            return (self.values, names);
        }
        // The rows start `offset` values into the buffer (0 unless the
        // array was sliced); writes stay behind every row not yet read.
        let (mut flat, offset) = self.values.into_raw_vec_and_offset();
        let start = offset.unwrap_or(0);
        let mut row = vec![0.0f32; k];
        for r in 0..n {
            let from = &flat[start + r * d..start + (r + 1) * d];
            for (v, &j) in row.iter_mut().zip(idx) {
                *v = from[j];
            }
            flat[r * k..(r + 1) * k].copy_from_slice(&row);
        }
        flat.truncate(n * k);
        let values = Array2::from_shape_vec((n, k), flat).expect("n × selected values");
        (values, names)
    }

    pub fn n_rows(&self) -> usize {
        self.values.nrows()
    }

    pub fn n_cols(&self) -> usize {
        self.values.ncols()
    }
}

/// Columns `idx` of `values` (any layout) as a new row-major matrix, in
/// huge pages where it is large: a PCA reads it as it is (see
/// [`super::pages`]).
fn gather(values: ArrayView2<f32>, idx: &[usize]) -> Array2<f32> {
    if idx.iter().copied().eq(0..values.ncols()) {
        return super::pages::standard_copy(values);
    }
    let mut flat = super::pages::with_capacity(values.nrows() * idx.len());
    for row in values.rows() {
        flat.extend(idx.iter().map(|&j| row[j]));
    }
    Array2::from_shape_vec((values.nrows(), idx.len()), flat).expect("n × selected values")
}

/// Fails on the first NaN or infinity (in row order), naming its row (1-based)
/// and column. Also rejects a matrix without rows.
pub fn check_finite(x: ArrayView2<f32>, columns: &[String]) -> Result<(), DataError> {
    if x.nrows() == 0 {
        return Err(DataError::NoRows);
    }
    // Fast path: one vectorisable scan in parallel chunks; the exact place is
    // looked for only when something is wrong.
    if let Some(values) = x.as_slice() {
        let all_finite = values
            .par_chunks(1 << 16)
            .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()));
        if all_finite {
            return Ok(());
        }
    }
    let first_bad = x
        .axis_iter(Axis(0))
        .into_par_iter()
        .enumerate()
        .filter_map(|(i, row)| row.iter().position(|v| !v.is_finite()).map(|j| (i, j)))
        .min();
    match first_bad {
        None => Ok(()),
        Some((i, j)) => Err(DataError::NotFinite {
            row: i + 1,
            column: columns
                .get(j)
                .cloned()
                .unwrap_or_else(|| format!("#{}", j + 1)),
            value: x[[i, j]],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ShapeBuilder;

    /// All columns (the whole-buffer copy), a reordered subset (the
    /// gather), an unknown name, column-major values and a repeated name
    /// (an error: it would count twice in every distance).
    #[test]
    fn select_columns_copies_all_or_gathers_the_named_ones() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let data = Dataset::from_rows(names(&["a", "b", "c"]), (0..12).map(|v| v as f32).collect())
            .unwrap();
        let (all, columns) = data.select_columns(&[]).unwrap();
        assert_eq!(all, data.values);
        assert_eq!(columns, names(&["a", "b", "c"]));
        let (some, columns) = data.select_columns(&names(&["c", "a"])).unwrap();
        assert_eq!(columns, names(&["c", "a"]));
        assert_eq!(
            some,
            Array2::from_shape_vec((4, 2), vec![2., 0., 5., 3., 8., 6., 11., 9.]).unwrap()
        );
        let err = data.select_columns(&names(&["z"])).unwrap_err();
        assert!(err.to_string().contains('z'), "{err}");

        // Column-major values (no row-major slice to copy whole), and a
        // name asked for twice.
        let mut fortran = Array2::zeros((4, 3).f());
        fortran.assign(&data.values);
        let data = Dataset {
            columns: data.columns,
            values: fortran,
        };
        let (all, _) = data.select_columns(&[]).unwrap();
        assert_eq!(all, data.values);
        assert!(all.is_standard_layout());
        let err = data.select_columns(&names(&["b", "a", "b"])).unwrap_err();
        assert_eq!(err.to_string(), "column \"b\" is named more than once");
    }

    /// In place, the same matrix and names as the copying selection, for
    /// every kind of choice; its errors are the same too.
    #[test]
    fn into_columns_moves_the_chosen_values_as_select_columns_copies_them() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let header = names(&["a", "b", "c", "d", "e"]);
        let data =
            Dataset::from_rows(header, (0..5 * 7).map(|v| v as f32 * 0.5).collect()).unwrap();
        let mut fortran = Array2::zeros((7, 5).f());
        fortran.assign(&data.values);
        let column_major = Dataset {
            columns: data.columns.clone(),
            values: fortran,
        };
        let choices: [&[&str]; 8] = [
            &[],
            &["a", "b", "c", "d", "e"],
            &["b", "a", "c", "e", "d"],
            &["b", "d"],
            &["e", "a", "c"],
            &["e"],
            &["a", "b", "c", "d"],
            &["b", "c", "d", "e"],
        ];
        // Owned but sliced: its rows start partway into the buffer.
        let taller = Array2::from_shape_fn((9, 5), |(i, j)| (i * 5 + j) as f32 * 0.5 - 1.0);
        let sliced = Dataset {
            columns: data.columns.clone(),
            values: taller.slice_move(ndarray::s![2.., ..]),
        };
        assert!(sliced.values.is_standard_layout());
        for source in [&data, &column_major, &sliced] {
            for choice in choices {
                let wanted = names(choice);
                let copied = source.select_columns(&wanted).unwrap();
                let moved = source.clone().into_columns(&wanted).unwrap();
                assert_eq!(moved, copied, "{choice:?}");
                assert!(moved.0.is_standard_layout(), "{choice:?}");
            }
            for bad in [&["z"][..], &["a", "a"][..]] {
                let wanted = names(bad);
                let copied = source.select_columns(&wanted).unwrap_err().to_string();
                let moved = source
                    .clone()
                    .into_columns(&wanted)
                    .unwrap_err()
                    .to_string();
                assert_eq!(moved, copied);
            }
            // By position, a repeated one (more values a row than the row
            // holds) is copied, not moved over the next row.
            let (wide, _) = source.clone().into_columns_at(&[4, 4, 0, 1, 2, 3]);
            for (i, row) in wide.rows().into_iter().enumerate() {
                assert_eq!(row[0], source.values[[i, 4]]);
                assert_eq!(row[1], source.values[[i, 4]]);
                assert_eq!(row[5], source.values[[i, 3]]);
            }
        }
        // No rows.
        let empty = Dataset {
            columns: data.columns.clone(),
            values: Array2::zeros((0, 5)),
        };
        let (none, columns) = empty.into_columns(&names(&["d", "a"])).unwrap();
        assert_eq!(none.dim(), (0, 2));
        assert_eq!(columns, names(&["d", "a"]));
    }

    /// A header that names a column twice: taking every column, or asking
    /// for that name, is an error; asking for other columns is not.
    #[test]
    fn a_header_naming_a_column_twice_is_refused_where_it_matters() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let header = names(&["a", "b", "a"]);
        for wanted in [names(&[]), names(&["a"]), names(&["b", "a"])] {
            let e = super::super::resolve_columns(&header, &wanted).unwrap_err();
            assert_eq!(e.to_string(), "column \"a\" is named more than once");
        }
        assert_eq!(
            super::super::resolve_columns(&header, &names(&["b"])).unwrap(),
            [1]
        );
    }

    /// A header column without a name is refused when every column is
    /// taken, and may be left out.
    #[test]
    fn an_unnamed_header_column_is_refused_only_when_taken() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let header = names(&["a", "", "b"]);
        let e = super::super::resolve_columns(&header, &[]).unwrap_err();
        assert!(matches!(e, DataError::UnnamedColumn { position: 2 }), "{e}");
        assert_eq!(
            super::super::resolve_columns(&header, &names(&["b", "a"])).unwrap(),
            [2, 0]
        );
    }
}
