//! A real server on 127.0.0.1:0 in this process, plus key and certificate
//! helpers for the security tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use segmenta::service::auth::{generate_key, hash_key};
use segmenta::service::{serve, ServeError, ServerConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Served {
    pub async fn start(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve(config, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            done,
        }
    }

    /// A plaintext channel; every call has a 60 s deadline so a hang fails.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.done)
            .await
            .expect("server stops")
            .unwrap()
    }
}

/// Keys for each role, and the keys file that lists them.
pub struct Keys {
    pub read: String,
    pub write: String,
    pub admin: String,
}

impl Keys {
    pub fn write_file(path: &Path) -> Self {
        let keys = Self {
            read: generate_key().unwrap(),
            write: generate_key().unwrap(),
            admin: generate_key().unwrap(),
        };
        std::fs::write(
            path,
            format!(
                "# test keys\nanalyst read {}\npipeline write {}\nops admin {}\n",
                hash_key(&keys.read),
                hash_key(&keys.write),
                hash_key(&keys.admin)
            ),
        )
        .unwrap();
        keys
    }
}

/// `message` with `authorization: Bearer key`.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, made fresh for each test (PEM).
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Segmenta test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self {
            ca,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Writes every PEM into `dir` and returns the server's TLS files.
    pub fn write(&self, dir: &Path, mutual: bool) -> segmenta::service::TlsFiles {
        for (name, pem) in [
            ("ca.pem", &self.ca),
            ("server.pem", &self.server_cert),
            ("server.key", &self.server_key),
            ("client.pem", &self.client_cert),
            ("client.key", &self.client_key),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        segmenta::service::TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: mutual.then(|| dir.join("ca.pem")),
        }
    }
}

/// The tests' tokio runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
