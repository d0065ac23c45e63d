//! Server-side files (`Import`, `Segment` from a path): off unless the
//! operator names import roots, and then only regular files under them.
//!
//! A path is canonicalised (every symlink resolved) and must lie under a
//! canonicalised root, so `..`, absolute paths elsewhere, `/proc/self/…` and
//! symlinks leading out are all refused. Devices, FIFOs, sockets and
//! directories are refused too, and so is a file whose mode lets nobody read
//! it (root could, but an operator who took every read bit away did not
//! mean to share it). Whatever the reason, the answer is the same "not found
//! or not allowed": the API is no oracle for what exists on the server.
//!
//! Errors about a file's contents never quote them (see [`content_error`]).

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::auth::clip;
use super::error::ServiceError;
use crate::data::DataError;
use crate::segmentation::SegmentationError;

#[derive(Debug, Clone, Default)]
pub struct ImportRoots {
    roots: Vec<PathBuf>,
}

impl ImportRoots {
    /// Canonicalises each root; one that does not exist is an error at start-up.
    pub fn new(roots: &[PathBuf]) -> std::io::Result<Self> {
        let roots = roots
            .iter()
            .map(|r| {
                r.canonicalize().map_err(|e| {
                    std::io::Error::new(e.kind(), format!("import root {}: {e}", r.display()))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots })
    }

    pub fn is_enabled(&self) -> bool {
        !self.roots.is_empty()
    }

    /// Checks `path` again when a queued job is about to read it: it must
    /// still pass every check and be the same file (device and inode), so a
    /// file swapped for a link to elsewhere meanwhile is refused.
    pub fn recheck(&self, field: &str, allowed: &Allowed) -> Result<(), ServiceError> {
        let now = self.allow(field, &allowed.asked)?;
        if (now.dev, now.ino) != (allowed.dev, allowed.ino) {
            return Err(self.refused(field, &allowed.asked));
        }
        Ok(())
    }

    fn refused(&self, field: &str, path: &str) -> ServiceError {
        ServiceError::PermissionDenied(format!(
            "{field}: {:?}: not found or not allowed (only regular files under the server's import roots)",
            clip(path)
        ))
    }

    /// The file `path` names, if it is allowed.
    pub fn allow(&self, field: &str, path: &str) -> Result<Allowed, ServiceError> {
        if !self.is_enabled() {
            return Err(ServiceError::PermissionDenied(format!(
                "{field}: server-side paths are disabled on this server; upload the file instead, \
                 or start the server with --import-root DIR to allow files under DIR"
            )));
        }
        let refused = || self.refused(field, path);
        if path.is_empty() || path.len() > 4096 || path.contains('\0') {
            return Err(refused());
        }
        let canonical = Path::new(path).canonicalize().map_err(|_| refused())?;
        if !self.roots.iter().any(|r| canonical.starts_with(r)) {
            return Err(refused());
        }
        // O_NOFOLLOW: the last component must not have become a symlink since.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&canonical)
            .map_err(|_| refused())?;
        let meta = file.metadata().map_err(|_| refused())?;
        // More than one link: a hard link could bring a file from outside
        // the roots in, and canonicalising cannot tell.
        if !meta.file_type().is_file() || meta.mode() & 0o444 == 0 || meta.nlink() != 1 {
            return Err(refused());
        }
        Ok(Allowed {
            asked: path.to_owned(),
            path: canonical,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A server-side file that passed the checks, and which file it was.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// As the client wrote it (checked again before reading).
    pub asked: String,
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A data error about a server-side file, without the file's contents: no
/// cell values, no header beyond the column the client named, no parser
/// messages (which can quote bytes).
pub fn content_error(e: DataError) -> ServiceError {
    let (field, message) = match e {
        DataError::Io { .. } | DataError::UnknownFormat { .. } => {
            ("path", "not found or not allowed".to_owned())
        }
        DataError::Malformed { .. } => (
            "path",
            "the file is not valid CSV (with a header row) or Parquet".to_owned(),
        ),
        DataError::UnknownColumn { name, .. } => (
            "columns",
            format!("the file has no column {:?}", clip(&name)),
        ),
        // The name may come from the file's header: not quoted.
        DataError::RepeatedColumn { .. } => (
            "columns",
            "a column is named more than once (in the request or the file's header)".to_owned(),
        ),
        DataError::NonNumericColumn { .. } => (
            "columns",
            "a chosen column is not numeric (name the numeric columns)".to_owned(),
        ),
        // The column's name comes from the file's header: not quoted.
        DataError::NotNumeric { row, .. } => (
            "path",
            format!(
                "row {row}: a value is not a number (an id or text column cannot be \
                     clustered: name the numeric ones in `columns`)"
            ),
        ),
        DataError::NotFinite { row, .. } => {
            ("path", format!("row {row}: a value is not a finite number"))
        }
        e @ (DataError::NoRows
        | DataError::NoHeader
        | DataError::NoColumns
        | DataError::UnnamedColumn { .. }
        | DataError::Shape { .. }
        | DataError::TooLarge { .. }) => return crate::Error::from(e).into(),
    };
    ServiceError::invalid(field, message)
}

/// A segment job's error without cell values: job records are readable by
/// every read key and outlive the log. For a server-side file, also nothing
/// from its header ([`content_error`]); for an uploaded log, the column
/// names the client gave stay, to help fix the request.
pub fn segmentation_content_error(e: crate::Error, server_file: bool) -> ServiceError {
    match e {
        crate::Error::Data(d) if server_file => content_error(d),
        crate::Error::Data(DataError::NotNumeric { column, row, .. }) => ServiceError::invalid(
            "transactions",
            format!("row {row}, column {:?}: not a number", clip(&column)),
        ),
        crate::Error::Data(DataError::NotFinite { column, row, .. }) => ServiceError::invalid(
            "transactions",
            format!("row {row}, column {:?}: not a finite number", clip(&column)),
        ),
        // A parser's message can quote the bytes it choked on, and the path
        // is the server's.
        // The stored file could not be read: the server's fault, not the
        // request's (and the path is the server's).
        crate::Error::Data(DataError::Io { .. }) => {
            ServiceError::Internal("the stored log could not be read".into())
        }
        crate::Error::Value(v) => crate::Error::Value(v.without_log_dates()).into(),
        crate::Error::Data(DataError::Malformed { .. } | DataError::UnknownFormat { .. }) => {
            ServiceError::invalid(
                "transactions",
                "the log cannot be read as the format it was uploaded as (CSV with a header \
                 row, or Parquet with string, number or date columns)",
            )
        }
        crate::Error::Segmentation(SegmentationError::BadRow {
            row,
            problem,
            column,
            ..
        }) => ServiceError::invalid(
            "transactions",
            if server_file {
                format!("row {row}: {problem}")
            } else {
                format!("row {row}: {problem} (column {:?})", clip(&column))
            },
        ),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_under_a_root_are_allowed() {
        let outside = tempfile::TempDir::new().unwrap();
        let root = tempfile::TempDir::new().unwrap();
        let inside = root.path().join("ok.csv");
        std::fs::write(&inside, "a\n1\n").unwrap();
        std::fs::write(outside.path().join("secret.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.csv"),
            root.path().join("link.csv"),
        )
        .unwrap();
        std::fs::create_dir(root.path().join("dir.csv")).unwrap();
        std::fs::hard_link(
            outside.path().join("secret.csv"),
            root.path().join("hard.csv"),
        )
        .unwrap();
        let locked = root.path().join("locked.csv");
        std::fs::write(&locked, "a\n1\n").unwrap();
        std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();

        let none = ImportRoots::default();
        let e = none.allow("path", inside.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("--import-root"), "{e}");

        let roots = ImportRoots::new(&[root.path().to_owned()]).unwrap();
        assert_eq!(
            roots.allow("path", inside.to_str().unwrap()).unwrap().path,
            inside.canonicalize().unwrap()
        );
        let escape = format!("{}/../{}/secret.csv", root.path().display(), {
            outside.path().file_name().unwrap().to_string_lossy()
        });
        for bad in [
            outside
                .path()
                .join("secret.csv")
                .to_string_lossy()
                .into_owned(),
            escape,
            root.path().join("link.csv").to_string_lossy().into_owned(),
            root.path().join("dir.csv").to_string_lossy().into_owned(),
            root.path().join("hard.csv").to_string_lossy().into_owned(),
            root.path()
                .join("missing.csv")
                .to_string_lossy()
                .into_owned(),
            locked.to_string_lossy().into_owned(),
            "/proc/self/cwd/Cargo.toml".into(),
            "/dev/zero".into(),
            String::new(),
        ] {
            let e = roots.allow("path", &bad).unwrap_err();
            assert!(
                matches!(&e, ServiceError::PermissionDenied(m) if m.contains("not found or not allowed")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_file_swapped_after_the_check_is_refused() {
        let root = tempfile::TempDir::new().unwrap();
        let outside = tempfile::TempDir::new().unwrap();
        let file = root.path().join("swap.csv");
        std::fs::write(&file, "a\n1\n").unwrap();
        std::fs::write(outside.path().join("secret.csv"), "b\n2\n").unwrap();
        let roots = ImportRoots::new(&[root.path().to_owned()]).unwrap();
        let allowed = roots.allow("path", file.to_str().unwrap()).unwrap();
        roots.recheck("path", &allowed).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.csv"), &file).unwrap();
        assert!(roots.recheck("path", &allowed).is_err());
        // A hard link to the outside file in its place: another inode.
        std::fs::remove_file(&file).unwrap();
        std::fs::hard_link(outside.path().join("secret.csv"), &file).unwrap();
        assert!(roots.recheck("path", &allowed).is_err());
    }

    /// An uploaded log's read errors keep the client's column names but
    /// never the server's path or a parser's quote of the bytes.
    #[test]
    fn uploaded_log_errors_name_no_path_and_no_bytes() {
        let e = segmentation_content_error(
            DataError::Malformed {
                path: "/srv/data/transactions/tx-1/log.parquet".into(),
                message: "Cast error: Failed to convert 2147483647 to temporal".into(),
            }
            .into(),
            false,
        )
        .to_string();
        assert!(!e.contains("/srv") && !e.contains("2147483647"), "{e}");
        assert!(e.contains("cannot be read as the format"), "{e}");
        let e = segmentation_content_error(
            DataError::NotFinite {
                row: 4,
                column: "amount".into(),
                value: f32::INFINITY,
            }
            .into(),
            false,
        )
        .to_string();
        assert!(
            e.contains("row 4") && e.contains("amount") && !e.contains("inf"),
            "{e}"
        );
    }

    #[test]
    fn content_errors_quote_nothing_from_the_file() {
        let e = content_error(DataError::NotNumeric {
            column: "amount".into(),
            row: 7,
            value: "alice@example.com".into(),
            hint: String::new(),
        });
        assert!(!e.to_string().contains("alice"), "{e}");
        assert!(e.to_string().contains("row 7"), "{e}");
        let e = content_error(DataError::UnknownColumn {
            name: "x".into(),
            available: "ssn, salary".into(),
            hint: String::new(),
        });
        assert!(!e.to_string().contains("ssn"), "{e}");
    }
}
