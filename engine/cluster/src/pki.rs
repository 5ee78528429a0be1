//! The cluster's certificates: a CA per cluster and one certificate per node, made by
//! `warden cluster init` ([`init_cluster`]) and loaded by the transport ([`TlsIdentity`]).
//!
//! A node trusts only its cluster's CA, for both sides of a connection (mutual TLS 1.3, ring
//! provider), so a node of another cluster, whose certificate another CA signed, is refused
//! during the handshake. A node certificate names its node (DNS subject alternative name); a
//! client checks that the server it reached holds the certificate of the node it meant.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why making or loading the cluster's certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("invalid node name {0:?}: a node name must be a DNS name (letters, digits, '-', '.')")]
    NodeName(String),
    #[error("node {0:?} is listed twice")]
    Duplicate(String),
    #[error("{}: a private key must be readable by its owner only (mode 0600), found {mode:o}", path.display())]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

/// The CA certificate, the same on every node.
pub const CA_CERT: &str = "ca.pem";
/// The CA's key: needed only to add nodes later; keep it off the nodes once they are set up.
pub const CA_KEY: &str = "ca.key";

pub fn node_cert_file(node: &str) -> String {
    format!("{node}.pem")
}

pub fn node_key_file(node: &str) -> String {
    format!("{node}.key")
}

fn check_node_name(name: &str) -> Result<(), PkiError> {
    // A DNS name is also a safe file name (no '/'), and is what the peer's certificate names.
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) if !name.starts_with('.') => Ok(()),
        _ => Err(PkiError::NodeName(name.to_owned())),
    }
}

/// Writes a new file (never overwrites) with `mode`, and syncs it.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_at(path))?;
    f.write_all(contents.as_bytes()).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

/// Makes a cluster CA and a certificate and key for each node in `dir` (created if missing):
/// `ca.pem`, `ca.key`, `<node>.pem`, `<node>.key`; keys with mode 0600. Refuses to overwrite
/// any existing file, so a second run cannot replace a running cluster's CA.
pub fn init_cluster(dir: &Path, cluster_name: &str, nodes: &[&str]) -> Result<(), PkiError> {
    for (i, n) in nodes.iter().enumerate() {
        check_node_name(n)?;
        if nodes[..i].contains(n) {
            return Err(PkiError::Duplicate((*n).to_owned()));
        }
    }
    // Refuse before writing anything, so that a refused run leaves no partial set behind.
    let files = [CA_CERT.to_owned(), CA_KEY.to_owned()].into_iter().chain(nodes.iter().flat_map(|n| [node_cert_file(n), node_key_file(n)]));
    for f in files {
        let path = dir.join(f);
        if path.symlink_metadata().is_ok() {
            return Err(PkiError::Io { path, source: io::ErrorKind::AlreadyExists.into() });
        }
    }
    fs::create_dir_all(dir).map_err(io_at(dir))?;

    let ca_key = KeyPair::generate()?;
    let ca = ca_params(cluster_name)?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write_new(&dir.join(CA_CERT), &ca_cert.pem(), 0o644)?;
    write_new(&dir.join(CA_KEY), &ca_key.serialize_pem(), 0o600)?;
    let issuer = Issuer::new(ca, ca_key);
    for node in nodes {
        issue(dir, &issuer, cluster_name, node)?;
    }
    // The directory entries too, so that a crash right after init leaves all files or none.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// A certificate and key for a node added later (`warden cluster add-node`), signed with the
/// CA in `dir` (`ca.pem` and `ca.key`, as `init_cluster` wrote them for `cluster_name`).
/// Refuses to overwrite the node's files.
pub fn add_node(dir: &Path, cluster_name: &str, node: &str) -> Result<(), PkiError> {
    check_node_name(node)?;
    for f in [node_cert_file(node), node_key_file(node)] {
        let path = dir.join(f);
        if path.symlink_metadata().is_ok() {
            return Err(PkiError::Io { path, source: io::ErrorKind::AlreadyExists.into() });
        }
    }
    let key_path = dir.join(CA_KEY);
    let ca_key = KeyPair::from_pem(&fs::read_to_string(&key_path).map_err(io_at(&key_path))?)?;
    // The CA certificate's subject and key, as made by `init_cluster`: a node certificate names
    // its issuer by that subject, and is checked against `ca.pem`'s key.
    let ca_path = dir.join(CA_CERT);
    let ca_pem = fs::read_to_string(&ca_path).map_err(io_at(&ca_path))?;
    let params = ca_params(cluster_name)?;
    let again = params.self_signed(&ca_key)?;
    if subject_of(&again.pem()) != subject_of(&ca_pem) {
        return Err(PkiError::Pem {
            path: ca_path,
            what: format!("it is not the CA of cluster {cluster_name:?} (check --name), or its key is not {}", key_path.display()),
        });
    }
    issue(dir, &Issuer::new(params, ca_key), cluster_name, node)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// The subject and public key of a PEM certificate, as DER bytes (what a peer checks a node
/// certificate's issuer against), or nothing for a file that is not one certificate.
fn subject_of(pem: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let anchor = webpki::anchor_from_trusted_cert(&der).ok()?;
    Some((anchor.subject.as_ref().to_vec(), anchor.subject_public_key_info.as_ref().to_vec()))
}

/// The cluster CA's parameters: the same for the same cluster name, so that a node added later
/// is signed under the subject `ca.pem` carries.
fn ca_params(cluster_name: &str) -> Result<CertificateParams, PkiError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, format!("warden cluster {cluster_name} CA"));
    ca.distinguished_name.push(DnType::OrganizationName, cluster_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca)
}

/// Writes `<node>.pem` and `<node>.key`, the certificate signed by `issuer`.
fn issue(dir: &Path, issuer: &Issuer<'_, KeyPair>, cluster_name: &str, node: &str) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, node);
    params.distinguished_name.push(DnType::OrganizationName, cluster_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // The same certificate serves a node as server (it accepts) and as client (it connects).
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    write_new(&dir.join(node_cert_file(node)), &cert.pem(), 0o644)?;
    write_new(&dir.join(node_key_file(node)), &key.serialize_pem(), 0o600)
}

/// A node's credentials: the cluster CA, its certificate and its key.
pub struct TlsIdentity {
    pub node: String,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads `node`'s credentials from `dir`. A key that others may read is refused.
    pub fn load(dir: &Path, node: &str) -> Result<Self, PkiError> {
        check_node_name(node)?;
        let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| PkiError::Pem { path: path.to_owned(), what: e.to_string() };
        let ca_path = dir.join(CA_CERT);
        let ca = CertificateDer::from_pem_file(&ca_path).map_err(|e| pem_err(&ca_path, e))?;
        let cert_path = dir.join(node_cert_file(node));
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| pem_err(&cert_path, e))?;
        let key_path = dir.join(node_key_file(node));
        let mode = fs::metadata(&key_path).map_err(io_at(&key_path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyMode { path: key_path, mode });
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_err(&key_path, e))?;
        Ok(Self { node: node.to_owned(), ca, cert, key })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// Accepts only clients whose certificate the cluster CA signed. TLS 1.3 only.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider()).build()?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        Ok(Arc::new(config))
    }

    /// Trusts only servers whose certificate the cluster CA signed, and presents this node's.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}
