//! API keys, roles, and which role each gRPC method needs.
//!
//! The keys file holds one key per line, `NAME ROLE SHA256_HEX`, where the
//! hash is of the key itself: the server never stores a usable key, and a
//! leaked file grants nothing. Clients send `authorization: Bearer KEY`.
//! Lookups hash the presented key and compare it with every stored hash in
//! constant time, so timing tells nothing about how close a guess was.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Get, List, watching jobs, Assign, (inverse) Transform, Evaluate, downloads.
    Read,
    /// Read, plus uploads, imports, fits, segment jobs and cancelling jobs.
    Write,
    /// Write, plus every Delete and customer erasure.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {:?} (expected read, write or admin)",
                clip(other)
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the keys file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keys file line {line}: {message}")]
    Line { line: usize, message: String },
    /// A reload found a file that parses but lists no key.
    #[error("the keys file lists no keys; keeping the old ones")]
    NoKeys,
    /// Anyone who may write the file may add an admin key.
    #[error("the keys file {path} may be written by other users (mode {mode:o}): `chmod go-w` it")]
    Writable { path: PathBuf, mode: u32 },
    /// Its owner, or anyone who may replace it in its directory, may too.
    #[error("the keys file {path} {problem}: only this server's user (or root) may control it")]
    NotOurs { path: PathBuf, problem: String },
}

/// One key as the file lists it.
#[derive(Clone)]
struct Key {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// Who made a call: the key's name (or `anonymous` when auth is off) and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The keys of one version of the file.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parses the file's text; `#` starts a comment, blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let bad = |message: String| KeyFileError::Line {
                line: line_no,
                message,
            };
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(bad(format!(
                    "expected `NAME ROLE SHA256_HEX`, found {} fields",
                    fields.len()
                )));
            };
            let role: Role = role.parse().map_err(bad)?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest)
                .map_err(|_| bad("the hash must be 64 hexadecimal digits (SHA-256)".into()))?;
            if keys.iter().any(|k| k.name == name) {
                return Err(bad(format!("the name {:?} is used twice", clip(name))));
            }
            if keys.iter().any(|k| k.hash == digest) {
                return Err(bad("the same key is listed twice".into()));
            }
            keys.push(Key {
                name: name.to_owned(),
                role,
                hash: digest,
            });
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let meta = std::fs::metadata(path).map_err(io)?;
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(KeyFileError::Writable {
                    path: path.to_owned(),
                    mode: mode & 0o777,
                });
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            let not_ours = |problem: String| KeyFileError::NotOurs {
                path: path.to_owned(),
                problem,
            };
            if meta.uid() != me && meta.uid() != 0 {
                return Err(not_ours(format!("is owned by user {}", meta.uid())));
            }
            // A directory others may write lets them rename a file of their
            // own over it (unless sticky); so does one owned by another user.
            let parent = std::fs::canonicalize(path)
                .ok()
                .and_then(|p| p.parent().map(std::path::Path::to_owned));
            if let Some(dir) = parent {
                let d = std::fs::metadata(&dir).map_err(io)?;
                let dmode = d.permissions().mode();
                if dmode & 0o022 != 0 && dmode & 0o1000 == 0 {
                    return Err(not_ours(format!(
                        "is in {}, which other users may write (mode {:o})",
                        dir.display(),
                        dmode & 0o7777
                    )));
                }
                if d.uid() != me && d.uid() != 0 {
                    return Err(not_ours(format!(
                        "is in {}, owned by user {}",
                        dir.display(),
                        d.uid()
                    )));
                }
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The caller holding `key`, if any. Every stored hash is compared, in
    /// constant time, whether or not an earlier one matched.
    pub fn find(&self, key: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.hash.ct_eq(&presented)) {
                found = Some(Caller {
                    name: k.name.clone(),
                    role: k.role,
                });
            }
        }
        found
    }
}

/// The server's keys, re-read from their file on SIGHUP.
pub struct Keys {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
}

impl Keys {
    pub fn open(path: &Path) -> Result<Self, KeyFileError> {
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(KeySet::load(path)?)),
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the file. A file that no longer parses, or lists no key,
    /// leaves the old keys in force (and says why), so a typo cannot lock
    /// everyone out.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let fresh = KeySet::load(&self.path)?;
        if fresh.is_empty() {
            return Err(KeyFileError::NoKeys);
        }
        let n = fresh.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(n)
    }
}

/// A fresh random key (256 bits from the operating system), as printed by
/// `segmenta keys new`.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sgk_{}", hex::encode(bytes)))
}

/// The keys file's hash of `key`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether a method needs a key at all, and which role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checks: load balancers call them without credentials.
    Open,
    Needs(Role),
}

/// The shape of a call, for deadlines: only unary calls get the server's
/// request timeout (a stream's length is its client's business, bounded by
/// the idle timeout instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub access: Access,
    pub unary: bool,
}

/// Every method this server knows, with the role it needs and whether it is
/// unary. `None` for anything else: such a path still needs a valid key (so
/// probing for methods needs credentials too) and then gets UNIMPLEMENTED.
pub fn method(path: &str) -> Option<Method> {
    use Role::*;
    // Exactly `/service/method`: any other spelling (extra slashes, say) is
    // unknown, so it cannot pose as a known method in logs and metrics.
    let (service, name) = path.strip_prefix('/')?.split_once('/')?;
    let unary = |role| {
        Some(Method {
            access: Access::Needs(role),
            unary: true,
        })
    };
    let stream = |role| {
        Some(Method {
            access: Access::Needs(role),
            unary: false,
        })
    };
    match (service, name) {
        ("grpc.health.v1.Health", "Check") => Some(Method {
            access: Access::Open,
            unary: true,
        }),
        ("grpc.health.v1.Health", "Watch") => Some(Method {
            access: Access::Open,
            unary: false,
        }),
        (
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
        ) => stream(Read),
        ("segmenta.v1.Datasets", "Upload") => stream(Write),
        ("segmenta.v1.Datasets", "Import") => unary(Write),
        ("segmenta.v1.Datasets", "Get" | "List") => unary(Read),
        ("segmenta.v1.Datasets", "Delete") => unary(Admin),
        ("segmenta.v1.Jobs", "WatchJob") => stream(Read),
        ("segmenta.v1.Jobs", "GetJob" | "ListJobs") => unary(Read),
        ("segmenta.v1.Jobs", "CancelJob") => unary(Write),
        ("segmenta.v1.Clustering", "FitKMeans") => unary(Write),
        ("segmenta.v1.Clustering", "Assign" | "Evaluate") => unary(Read),
        ("segmenta.v1.Clustering", "AssignStream") => stream(Read),
        ("segmenta.v1.Clustering", "PutPartition") => stream(Write),
        ("segmenta.v1.Clustering", "ReleasePartitions") => unary(Write),
        (
            "segmenta.v1.Clustering",
            "PartialStep" | "PartitionCost" | "SampleByCost" | "CandidateWeights",
        ) => unary(Read),
        ("segmenta.v1.Decomposition", "FitPca") => unary(Write),
        ("segmenta.v1.Decomposition", "Transform" | "InverseTransform") => unary(Read),
        ("segmenta.v1.Segmentations", "UploadTransactions") => stream(Write),
        ("segmenta.v1.Segmentations", "Segment" | "Clv") => unary(Write),
        ("segmenta.v1.Segmentations", "Uplift") => stream(Write),
        ("segmenta.v1.Segmentations", "GetSegmentation" | "GetClv" | "ListTransactions") => {
            unary(Read)
        }
        ("segmenta.v1.Segmentations", "DownloadArtifact") => stream(Read),
        ("segmenta.v1.Segmentations", "DeleteTransactions" | "DeleteSegmentation") => unary(Admin),
        ("segmenta.v1.Models", "Get" | "List" | "Export") => unary(Read),
        ("segmenta.v1.Models", "Import" | "CreateKMeans") => unary(Write),
        ("segmenta.v1.Models", "Delete") => unary(Admin),
        ("segmenta.v1.Server", "GetInfo") => unary(Read),
        ("segmenta.v1.Privacy", "EraseCustomer") => unary(Admin),
        _ => None,
    }
}

/// At most a short prefix of client input, for messages and logs.
pub fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_parses_and_finds_keys_by_hash() {
        let (a, b) = ("sgk_alpha", "sgk_beta");
        let text = format!(
            "# team keys\n\nanalyst read {}\n  ops admin {}  # rotated 2026-11\n",
            hash_key(a),
            hash_key(b)
        );
        let keys = KeySet::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys.find(a),
            Some(Caller {
                name: "analyst".into(),
                role: Role::Read
            })
        );
        assert_eq!(keys.find(b).unwrap().role, Role::Admin);
        assert_eq!(keys.find("sgk_gamma"), None);
        assert_eq!(keys.find(&hash_key(a)), None, "the hash is not the key");
    }

    #[cfg(unix)]
    #[test]
    fn a_keys_file_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys");
        let hash = hex::encode(Sha256::digest(b"sgk_alpha"));
        std::fs::write(&path, format!("a admin {hash}\n")).unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o666);
        let Err(e) = KeySet::load(&path) else {
            panic!("a world-writable keys file was loaded")
        };
        assert!(
            matches!(e, KeyFileError::Writable { mode: 0o666, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        chmod(0o644);
        assert_eq!(KeySet::load(&path).unwrap().len(), 1);
        // A directory others may write (not sticky): they could rename
        // their own file over it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let Err(e) = KeySet::load(&path) else {
            panic!("a keys file in a world-writable directory was loaded")
        };
        assert!(e.to_string().contains("other users may write"), "{e}");
        // Sticky, as /tmp: others cannot replace what is not theirs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(KeySet::load(&path).unwrap().len(), 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let h = hash_key("x");
        for (text, needle) in [
            ("a read".to_string(), "line 1: expected"),
            (format!("a owner {h}"), "unknown role"),
            ("a read 1234".to_string(), "64 hexadecimal"),
            (format!("a read {h}\na write {}", hash_key("y")), "line 2"),
            (format!("a read {h}\nb write {h}"), "listed twice"),
        ] {
            let e = KeySet::parse(&text).err().unwrap().to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn generated_keys_are_fresh_and_hash_to_64_hex_digits() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert_eq!(hash_key(&a).len(), 64);
    }

    #[test]
    fn every_write_and_delete_needs_its_role() {
        let access = |p: &str| method(p).map(|m| m.access);
        assert_eq!(access("/grpc.health.v1.Health/Check"), Some(Access::Open));
        assert_eq!(
            access("/segmenta.v1.Datasets/Get"),
            Some(Access::Needs(Role::Read))
        );
        assert_eq!(
            method("/segmenta.v1.Datasets/Upload"),
            Some(Method {
                access: Access::Needs(Role::Write),
                unary: false
            })
        );
        assert_eq!(
            access("/segmenta.v1.Models/Delete"),
            Some(Access::Needs(Role::Admin))
        );
        assert_eq!(
            access("/segmenta.v1.Privacy/EraseCustomer"),
            Some(Access::Needs(Role::Admin))
        );
        // Registering a model writes; exporting one and inverse
        // transforms read.
        assert_eq!(
            access("/segmenta.v1.Models/Import"),
            Some(Access::Needs(Role::Write))
        );
        // Caching partitions and registering centroids write; a partition's
        // share of a step or of k-means|| only reads.
        for write in [
            "/segmenta.v1.Clustering/ReleasePartitions",
            "/segmenta.v1.Models/CreateKMeans",
        ] {
            assert_eq!(access(write), Some(Access::Needs(Role::Write)), "{write}");
        }
        assert_eq!(
            method("/segmenta.v1.Clustering/PutPartition"),
            Some(Method {
                access: Access::Needs(Role::Write),
                unary: false
            })
        );
        for read in [
            "/segmenta.v1.Models/Export",
            "/segmenta.v1.Decomposition/InverseTransform",
            "/segmenta.v1.Clustering/PartialStep",
            "/segmenta.v1.Clustering/PartitionCost",
            "/segmenta.v1.Clustering/SampleByCost",
            "/segmenta.v1.Clustering/CandidateWeights",
        ] {
            assert_eq!(access(read), Some(Access::Needs(Role::Read)), "{read}");
        }
        // The value jobs and the uplift upload write; reading a CLV run reads.
        assert_eq!(
            access("/segmenta.v1.Segmentations/Clv"),
            Some(Access::Needs(Role::Write))
        );
        assert_eq!(
            method("/segmenta.v1.Segmentations/Uplift"),
            Some(Method {
                access: Access::Needs(Role::Write),
                unary: false
            })
        );
        assert_eq!(
            access("/segmenta.v1.Segmentations/GetClv"),
            Some(Access::Needs(Role::Read))
        );
        assert_eq!(method("/nope"), None);
        assert_eq!(method("//segmenta.v1.Server/GetInfo"), None);
        assert_eq!(method("/segmenta.v1.Server/GetInfo/"), None);
        assert_eq!(method("/segmenta.v1.Datasets/Steal"), None);
    }

    /// A method the table does not know is refused to every caller: each
    /// one in the API must be in it, with its streaming as declared.
    #[test]
    fn every_method_of_the_api_has_a_role() {
        use prost::Message as _;
        let set =
            prost_types::FileDescriptorSet::decode(crate::service::proto::FILE_DESCRIPTOR_SET)
                .unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                for m in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                    let found = method(&path).unwrap_or_else(|| panic!("{path} has no role"));
                    let unary = !m.client_streaming() && !m.server_streaming();
                    assert_eq!(found.unary, unary, "{path}");
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 39,
            "{seen} methods: a service is missing from the descriptor"
        );
    }

    #[test]
    fn clip_keeps_a_short_prefix_on_a_char_boundary() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(100);
        let c = clip(&long);
        assert!(c.len() < 90 && c.ends_with("(200 bytes)"), "{c}");
    }
}
